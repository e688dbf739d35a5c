"""The network's image input per patient, built once from the preprocessed images: ``(K, C, S, S)``.

From one patient's preprocessed folder (every image on one grid in the declared orientation, LPS by
default, so numpy axis 0 is the axial direction; intensities z-scored inside the brain, 0 outside):

- **Slices and ROI** (``ImageInputParams.roi``). The largest lesion is the largest connected component
  of the tumour core (NETC + ET), or of the whole tumour when there is no core.
  ``lesion`` (default): a fixed ``window_mm`` square centred in-plane on the largest lesion, on K axial
  slices spread evenly over that lesion's axial extent with one through its centre: every patient's
  pixels have the same size in millimetres, so the network sees a lesion's shape, rim and surroundings at
  one scale. ``tumour``: K slices spread over the whole tumour's axial extent (one through the largest
  lesion's centre) and one in-plane square for all of them, the bounding box of every lesion plus
  ``roi_margin_mm``, stretched to S x S (a small lesion and a large one look the same size). A lesion
  thinner than K slices gives repeated slices (each stays a real slice; no interpolation across slices).
  The square is taken from the image with zero padding where it leaves the grid (0 = the brain's mean,
  and outside the brain) and resized to S x S: images bilinearly (``torch.nn.functional.interpolate``,
  antialiased when shrinking), masks by nearest neighbour so they stay 0/1.
- **Channels.** ``ImageInputParams.sequences`` in order, then ``mask_channels`` (region masks, 0/1). A sequence
  the patient lacks (its site does not declare it) is a channel of zeros: the value of the brain's mean after
  normalisation, which augmentation leaves at zero (it jitters non-zero voxels only); the manifest lists those
  channels (``absent_sequences``). A sequence that none of the patients a model trains on has is refused
  (:func:`check_sequences_present`): a channel of zeros in training cannot be learned, and a patient that has
  the sequence would later meet untrained weights.

The array is float32. :class:`ImageInput` (a :class:`survival_model.stage.Stage`) writes it once per patient
under a content key (the patient's preprocessing key, these params and this module's code version):
``<work_dir>/inputs/<site>/<case id>/<key>/input.npy``, reused while none of them changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from survival_model.config import ImageInputParams
from survival_model.errors import ConfigError, PatientDataError
from survival_model.features.volumetric import region_mask
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import ImageReadError, read_image, read_json, write_json
from survival_model.patient import Patient
from survival_model.stage import Stage

STAGE = "inputs"
INPUT_FILE = "input.npy"
MANIFEST_FILE = "manifest.json"

FloatArray = npt.NDArray[np.float32]


def largest_lesion(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
    """The largest connected component of the tumour core (NETC + ET), or of the whole tumour when there is
    no core (26-connected)."""
    tumour = region_mask(labels, "wt")
    if not tumour.any():
        raise PatientDataError("empty_mask", "no tumour voxel in the label map: no slice to choose")
    core = region_mask(labels, "tc")
    components, _ = ndimage.label(core if core.any() else tumour, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    largest: npt.NDArray[np.bool_] = components == (int(np.argmax(sizes)) + 1)
    return largest


def _spread(low: int, high: int, k: int, centre: int) -> list[int]:
    """K indices spread evenly over [low, high], the one nearest ``centre`` moved onto it."""
    positions = np.rint(np.linspace(low, high, k)).astype(int) if k > 1 else np.array([centre])
    positions[int(np.argmin(np.abs(positions - centre)))] = centre
    return sorted(int(p) for p in positions)


def slice_positions(labels: npt.NDArray[np.integer], k: int, roi: str = "tumour") -> list[int]:
    """K axial indices (numpy axis 0) through the largest lesion's centre, spread over the whole tumour's axial
    extent (``roi="tumour"``) or over the largest lesion's (``roi="lesion"``)."""
    largest = largest_lesion(labels)
    lesion_axial = np.flatnonzero(largest.any(axis=(1, 2)))
    centre = int(np.rint(lesion_axial.mean()))
    extent = lesion_axial if roi == "lesion" else np.flatnonzero(region_mask(labels, "wt").any(axis=(1, 2)))
    return _spread(int(extent.min()), int(extent.max()), k, centre)


def roi_square(labels: npt.NDArray[np.integer], spacing_yx: tuple[float, float],
               margin_mm: float) -> tuple[int, int, int]:
    """(row0, col0, side) of a square in-plane ROI in voxels: tumour bounding box + margin, squared."""
    tumour: npt.NDArray[np.bool_] = np.asarray(region_mask(labels, "wt").any(axis=0))
    rows, cols = np.flatnonzero(tumour.any(axis=1)), np.flatnonzero(tumour.any(axis=0))
    margin = (margin_mm / spacing_yx[0], margin_mm / spacing_yx[1])
    extent = max(rows.max() - rows.min() + 1 + 2 * margin[0], cols.max() - cols.min() + 1 + 2 * margin[1])
    side = max(2, round(extent))
    centre = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
    return round(centre[0] - (side - 1) / 2), round(centre[1] - (side - 1) / 2), side


def lesion_window(labels: npt.NDArray[np.integer], spacing_yx: tuple[float, float],
                  window_mm: float) -> tuple[int, int, int]:
    """(row0, col0, side) of a fixed ``window_mm`` square centred in-plane on the largest lesion's centroid
    (side from the mean in-plane spacing: the preprocessed grid is isotropic in-plane)."""
    largest = largest_lesion(labels)
    _, rows, cols = np.nonzero(largest)
    side = max(2, round(window_mm / ((spacing_yx[0] + spacing_yx[1]) / 2)))
    centre = (float(rows.mean()), float(cols.mean()))
    return round(centre[0] - (side - 1) / 2), round(centre[1] - (side - 1) / 2), side


def input_geometry(labels: npt.NDArray[np.integer], spacing_yx: tuple[float, float],
                   params: ImageInputParams) -> tuple[list[int], tuple[int, int, int]]:
    """The K slice indices and the in-plane square (row0, col0, side) of a patient's input."""
    positions = slice_positions(labels, params.slices, params.roi)
    if params.roi == "lesion":
        return positions, lesion_window(labels, spacing_yx, params.window_mm)
    return positions, roi_square(labels, spacing_yx, params.roi_margin_mm)


def _crop(plane: npt.NDArray[np.generic], row0: int, col0: int, side: int) -> npt.NDArray[np.generic]:
    """``side x side`` window of ``plane`` at (row0, col0), zero-padded where it leaves the plane."""
    out = np.zeros((side, side), dtype=plane.dtype)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + side, plane.shape[0]), min(col0 + side, plane.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = plane[r0:r1, c0:c1]
    return out


def _resize(stack: FloatArray, size: int, nearest: bool) -> FloatArray:
    """(K, side, side) -> (K, size, size)."""
    import torch  # torch: only where inputs are built (the training flow's reuse check needs keys only)

    tensor = torch.from_numpy(np.ascontiguousarray(stack))[:, None]
    if nearest:
        out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="nearest-exact")
    else:
        out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=stack.shape[-1] > size)
    result: FloatArray = out[:, 0].numpy().astype(np.float32)
    return result


def build_image_input(images: Mapping[str, Path], seg: Path, params: ImageInputParams) -> FloatArray:
    """``(K, C, S, S)`` float32 for one preprocessed patient (see the module docstring)."""
    try:
        label_image = read_image(seg)
    except ImageReadError as exc:
        raise PatientDataError("preprocess_failed", f"cannot read the label map: {exc}") from None
    labels = sitk.GetArrayFromImage(label_image)
    spacing = label_image.GetSpacing()  # (x, y, z); numpy planes are (y, x)
    positions, (row0, col0, side) = input_geometry(labels, (spacing[1], spacing[0]), params)

    def planes(volume: npt.NDArray[np.generic]) -> FloatArray:
        return np.stack([_crop(volume[z], row0, col0, side) for z in positions]).astype(np.float32)

    channels: list[FloatArray] = []
    for sequence in params.sequences:
        path = images.get(sequence)
        if path is None:
            channels.append(np.zeros((params.slices, params.size, params.size), dtype=np.float32))
            continue
        image = read_image(path)
        if image.GetSize() != label_image.GetSize():
            raise PatientDataError("preprocess_failed", f"{sequence} is not on the label map's grid")
        channels.append(_resize(planes(sitk.GetArrayViewFromImage(image)), params.size, nearest=False))
    channels.extend(_region_planes(labels, positions, (row0, col0, side), params, params.mask_channels).values())
    return np.stack(channels, axis=1)


def _region_planes(labels: npt.NDArray[np.integer], positions: Sequence[int], roi: tuple[int, int, int],
                   params: ImageInputParams, regions: Sequence[str]) -> dict[str, FloatArray]:
    row0, col0, side = roi
    out = {}
    for region in regions:
        mask = region_mask(labels, region).astype(np.float32)
        planes = np.stack([_crop(mask[z], row0, col0, side) for z in positions])
        out[region] = _resize(planes, params.size, nearest=True)
    return out


def region_planes(seg: Path, params: ImageInputParams, regions: Sequence[str]) -> dict[str, FloatArray]:
    """Region masks (0/1, ``(K, S, S)``) on exactly the slices and ROI of the patient's image input: what
    an explanation map of that input is compared with."""
    label_image = read_image(seg)
    labels = sitk.GetArrayFromImage(label_image)
    spacing = label_image.GetSpacing()
    positions, roi = input_geometry(labels, (spacing[1], spacing[0]), params)
    return _region_planes(labels, positions, roi, params, regions)


def absent_sequences(images: Mapping[str, Path], params: ImageInputParams) -> list[str]:
    """The input's sequence channels that a patient with these ``images`` lacks (zeros in its input)."""
    return [s for s in params.sequences if s not in images]


def check_sequences_present(params: ImageInputParams, images: Mapping[str, Mapping[str, Path]]) -> dict[str, int]:
    """How many of the patients (case id -> its preprocessed images) have each sequence channel of ``params``;
    :class:`~survival_model.errors.ConfigError` when one of them is absent for every patient (no site of theirs
    declares it): a channel that is zeros for every training patient teaches the network nothing, and a
    patient that has the sequence would meet untrained weights. Remove it from ``training.inputs.sequences``."""
    counts: dict[str, int] = {s: sum(1 for patient in images.values() if s in patient) for s in params.sequences}
    unused = [s for s, n in counts.items() if n == 0]
    if images and unused:
        raise ConfigError(
            f"training.inputs.sequences lists {', '.join(unused)}, which none of the {len(images)} patient(s) the "
            "network trains on has (their sites do not declare it): a channel of zeros for every patient cannot be "
            f"learned; remove {', '.join(unused)} from training.inputs.sequences (patients per sequence: "
            f"{', '.join(f'{s} {n}' for s, n in counts.items())})")
    return counts


@dataclass(frozen=True)
class ImageInput(Stage[Path]):
    """One preprocessed patient's ``(K, C, S, S)`` input in ``<work_dir>/inputs/<site>/<case id>/<key[:16]>/``
    (``input.npy`` and its ``manifest.json``); the stage's result is the array's path."""

    name: ClassVar[str] = STAGE
    patient: Patient
    params: ImageInputParams
    work_dir: Path

    def label(self) -> str:
        return f"inputs-{self.patient.case_id}"

    def make_key(self) -> str:
        """The patient's preprocessing key, the params, this module's code."""
        return stable_hash(STAGE, code_version("survival_model.models.inputs"), self.patient.key,
                           self.params.model_dump(mode="json"))

    def place(self) -> tuple[str, ...]:
        return (STAGE, self.patient.site, self.patient.case_id)

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / INPUT_FILE, folder / MANIFEST_FILE]

    def compute(self, tmp: Path) -> None:
        p = self.patient
        array = build_image_input(p.images, p.mask, self.params)
        np.save(tmp / INPUT_FILE, array, allow_pickle=False)
        write_json({"case_id": p.case_id, "site": p.site, "key": self.key(), "shape": list(array.shape),
                    "channels": [*self.params.sequences, *self.params.mask_channels],
                    "absent_sequences": absent_sequences(p.images, self.params)}, tmp / MANIFEST_FILE)

    def load(self, folder: Path) -> Path | None:
        return folder / INPUT_FILE if all(p.is_file() for p in self.outputs(folder)) else None


def load_image_input(path: Path) -> FloatArray:
    """The stored input (no pickle: plain float32 array)."""
    array: FloatArray = np.load(path, allow_pickle=False)
    manifest = read_json(Path(path).parent / MANIFEST_FILE)
    if list(array.shape) != manifest["shape"]:
        raise PatientDataError("preprocess_failed", f"{path}: shape {array.shape} differs from its manifest")
    return array
