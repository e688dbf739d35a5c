"""The network's image input per patient, built once from the preprocessed images: ``(K, C, S, S)``.

From one patient's preprocessed folder (every image on one grid in the declared orientation, LPS by
default, so numpy axis 0 is the axial direction; intensities z-scored inside the brain, 0 outside):

- **Slices.** The K axial positions are spread evenly across the tumour's axial extent (whole tumour:
  NETC + SNFH + ET), and the one nearest the centre of the largest lesion (the largest connected
  component of the tumour core, NETC + ET, or of the whole tumour when there is no core) is moved onto
  it, so the slice through the main lesion is always there. A tumour thinner than K slices gives
  repeated slices (each stays a real slice; no interpolation across slices).
- **ROI.** One in-plane square for all K slices: the tumour's bounding box over all slices plus
  ``roi_margin_mm``, made square around its centre (side = the longer edge), taken from the image with
  zero padding where it leaves the grid (0 = the brain's mean, and outside the brain), resized to
  S x S: images bilinearly (``torch.nn.functional.interpolate``, antialiased when shrinking), masks by
  nearest neighbour so they stay 0/1.
- **Channels.** ``ImageInputParams.sequences`` in order (a sequence the patient lacks is zeros), then
  ``mask_channels`` (region masks, 0/1).

The array is float32. :func:`store_image_input` writes it once per patient under a content key
(the patient's preprocessing key, these params and this module's code version):
``<work_dir>/inputs/<site>/<case id>/<key>/input.npy``, reused while none of them changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from survival_model.config import ImageInputParams, Params
from survival_model.errors import PatientDataError
from survival_model.features.volumetric import region_mask
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import ImageReadError, atomic_directory, read_image, read_json, write_json
from survival_model.preprocess.stage import (
    PreprocessedPatient,
    load_outcome,
    patient_input,
    preprocess_folder,
    preprocess_key,
)

STAGE = "inputs"
INPUT_FILE = "input.npy"

FloatArray = npt.NDArray[np.float32]


def slice_positions(labels: npt.NDArray[np.integer], k: int) -> list[int]:
    """K axial indices (numpy axis 0) spread over the tumour, one through the largest lesion's centre."""
    tumour = region_mask(labels, "wt")
    if not tumour.any():
        raise PatientDataError("empty_mask", "no tumour voxel in the label map: no slice to choose")
    axial = np.flatnonzero(tumour.any(axis=(1, 2)))
    low, high = int(axial.min()), int(axial.max())
    positions = np.rint(np.linspace(low, high, k)).astype(int) if k > 1 else np.array([(low + high) // 2])
    core = region_mask(labels, "tc")
    components, _ = ndimage.label(core if core.any() else tumour, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    centre = int(np.rint(np.flatnonzero(largest.any(axis=(1, 2))).mean()))
    positions[int(np.argmin(np.abs(positions - centre)))] = centre
    return sorted(int(p) for p in positions)


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
    import torch  # heavy: only where inputs are built (the training flow's reuse check needs keys only)

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
    positions = slice_positions(labels, params.slices)
    spacing = label_image.GetSpacing()  # (x, y, z); numpy planes are (y, x)
    row0, col0, side = roi_square(labels, (spacing[1], spacing[0]), params.roi_margin_mm)

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
    roi = roi_square(labels, (spacing[1], spacing[0]), params.roi_margin_mm)
    return _region_planes(labels, slice_positions(labels, params.slices), roi, params, regions)


def input_key(patient: PreprocessedPatient, params: ImageInputParams) -> str:
    """Content key of one patient's image input: its preprocessing key, the params, this code."""
    return stable_hash(STAGE, code_version("survival_model.models.inputs"), patient.key,
                       params.model_dump(mode="json"))


def input_folder(work_dir: Path, site: str, case_id: str, key: str) -> Path:
    return work_dir / STAGE / site / case_id / key[:16]


def store_image_input(patient: PreprocessedPatient, params: ImageInputParams, work_dir: Path) -> Path:
    """Build the patient's ``(K, C, S, S)`` input once (atomically, content-keyed) and return its path."""
    key = input_key(patient, params)
    folder = input_folder(work_dir, patient.site, patient.case_id, key)
    if not (folder / INPUT_FILE).is_file():
        array = build_image_input(patient.images, patient.mask, params)
        with atomic_directory(folder) as tmp:
            np.save(tmp / INPUT_FILE, array, allow_pickle=False)
            write_json({"case_id": patient.case_id, "site": patient.site, "key": key, "shape": list(array.shape),
                        "channels": [*params.sequences, *params.mask_channels]}, tmp / "manifest.json")
    return folder / INPUT_FILE


def load_image_input(path: Path) -> FloatArray:
    """The stored input (no pickle: plain float32 array)."""
    array: FloatArray = np.load(path, allow_pickle=False)
    manifest = read_json(Path(path).parent / "manifest.json")
    if list(array.shape) != manifest["shape"]:
        raise PatientDataError("preprocess_failed", f"{path}: shape {array.shape} differs from its manifest")
    return array


def preprocessed_patients(cohort_rows: Sequence[Mapping[str, Any]], params: Params) -> dict[str, PreprocessedPatient]:
    """The preprocessed images of every cohort patient that passed preprocessing, by case id, found
    through the same content keys the imaging stage wrote them under (patients not preprocessed with
    the current settings, or quarantined, are absent)."""
    found: dict[str, PreprocessedPatient] = {}
    for row in cohort_rows:
        site, case_id = str(row["site"]), str(row["case_id"])
        inp = patient_input(row, params.institutions[site])
        key = preprocess_key(inp, str(row["images_key"]), params.preprocess)
        outcome = load_outcome(preprocess_folder(params.work_dir, site, case_id, key), site, case_id, key)
        if outcome is not None and outcome.patient is not None:
            found[case_id] = outcome.patient
    return found
