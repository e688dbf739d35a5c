"""The network's image input: slices through the tumour, one square ROI, channels, on tiny volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from survival_model.config import ImageInputParams
from survival_model.errors import ConfigError, PatientDataError
from survival_model.imageio import read_json
from survival_model.models.inputs import (
    ImageInput,
    build_image_input,
    check_sequences_present,
    lesion_window,
    load_image_input,
    roi_square,
    slice_positions,
)
from survival_model.patient import Patient
from survival_model.stage import run, short

SHAPE = (30, 40, 40)  # z, y, x
SPACING = (2.0, 2.0, 2.5)  # x, y, z (mm)


def ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius**2


def labels() -> np.ndarray:
    """A large lesion (ET rim, NETC core) centred at z=12 and a small one at z=21, both with edema."""
    out = np.zeros(SHAPE, dtype=np.uint8)
    out[ball((12, 18, 18), 8)] = 2
    out[ball((21, 26, 27), 4)] = 2
    out[ball((12, 18, 18), 5)] = 3
    out[ball((12, 18, 18), 2)] = 1
    out[ball((21, 26, 27), 2)] = 3
    return out


def write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture()
def patient(tmp_path: Path) -> tuple[dict[str, Path], Path]:
    z = np.broadcast_to(np.arange(SHAPE[0], dtype=np.float32)[:, None, None], SHAPE).copy()
    images = {"t1c": write(z, tmp_path / "t1c.nii"), "t2f": write(-z, tmp_path / "t2f.nii")}
    return images, write(labels(), tmp_path / "seg.nii")


def test_slices_span_the_tumour_and_one_goes_through_the_largest_lesion() -> None:
    seg = labels()
    extent = np.flatnonzero((seg > 0).any(axis=(1, 2)))
    positions = slice_positions(seg, 5)
    assert len(positions) == 5 and positions == sorted(positions)
    assert positions[0] == extent.min() and positions[-1] == extent.max()
    assert 12 in positions
    thin = np.zeros(SHAPE, dtype=np.uint8)
    thin[10:12, 5:8, 5:8] = 3
    assert slice_positions(thin, 4) == [10, 10, 11, 11]  # real slices, repeated
    with pytest.raises(PatientDataError, match="no tumour voxel"):
        slice_positions(np.zeros(SHAPE, dtype=np.uint8), 4)


def test_the_lesion_window_has_one_size_in_mm_and_its_slices_span_the_largest_lesion(
    patient: tuple[dict[str, Path], Path]
) -> None:
    seg = labels()
    positions = slice_positions(seg, 4, roi="lesion")
    assert positions[0] == 12 - 5 and positions[-1] == 12 + 5 and 12 in positions  # the large lesion's core only
    row0, col0, side = lesion_window(seg, (2.0, 2.0), window_mm=40.0)
    assert side == 20  # 40 mm at 2 mm, centred on the core (within half a voxel: an even side)
    assert abs(row0 + (side - 1) / 2 - 18) <= 0.5 and abs(col0 + (side - 1) / 2 - 18) <= 0.5
    images, path = patient
    params = ImageInputParams(slices=4, size=16, roi="lesion", window_mm=40.0, sequences=["t1c"],
                              mask_channels=["tc"])
    x = build_image_input(images, path, params)
    assert x.shape == (4, 2, 16, 16)
    core = x[:, 1].sum(axis=(1, 2))
    assert core[1] > 0 and core[2] > 0  # the middle slices cut the core ...
    small = labels()
    small[ball((12, 18, 18), 8)] = 0  # ... and a window of the same millimetres around a smaller lesion
    small[ball((12, 18, 18), 3)] = 3
    assert lesion_window(small, (2.0, 2.0), window_mm=40.0)[2] == 20


def test_the_roi_is_a_square_holding_the_whole_tumour_with_its_margin() -> None:
    seg = labels()
    row0, col0, side = roi_square(seg, (2.0, 2.0), margin_mm=4.0)
    tumour = (seg > 0).any(axis=0)
    rows, cols = np.flatnonzero(tumour.any(axis=1)), np.flatnonzero(tumour.any(axis=0))
    assert row0 <= rows.min() - 2 and col0 <= cols.min() - 2
    assert row0 + side > rows.max() + 1 and col0 + side > cols.max() + 1
    assert side == max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 + 4


def test_the_input_holds_the_chosen_slices_channels_in_order_and_masks_as_zero_one(
    patient: tuple[dict[str, Path], Path]
) -> None:
    images, seg = patient
    params = ImageInputParams(slices=5, size=32, roi="tumour", roi_margin_mm=4.0, sequences=["t1n", "t1c", "t2f"],
                              mask_channels=["et", "wt"])
    x = build_image_input(images, seg, params)
    assert x.shape == (5, 5, 32, 32) and x.dtype == np.float32
    positions = slice_positions(labels(), 5)
    assert np.all(x[:, 0] == 0)  # t1n is missing: zeros
    centre = x[:, 1, 12:20, 12:20]  # away from the zero padding at the ROI's edge
    assert np.allclose(centre, np.array(positions, dtype=np.float32)[:, None, None], atol=1e-4)
    assert np.allclose(x[:, 2, 12:20, 12:20], -centre)
    assert set(np.unique(x[:, 3:])) <= {0.0, 1.0}
    assert (x[:, 4].sum(axis=(1, 2)) > 0).all()  # whole tumour on every chosen slice
    assert x[:, 3].sum() < x[:, 4].sum()  # ET inside WT


def test_a_label_map_without_tumour_is_refused(tmp_path: Path, patient: tuple[dict[str, Path], Path]) -> None:
    images, _ = patient
    empty = write(np.zeros(SHAPE, dtype=np.uint8), tmp_path / "empty.nii")
    with pytest.raises(PatientDataError, match="no tumour voxel"):
        build_image_input(images, empty, ImageInputParams(slices=3, size=16))


def test_the_input_is_stored_once_per_content_key(tmp_path: Path, patient: tuple[dict[str, Path], Path]) -> None:
    images, seg = patient
    preprocessed = Patient(site="site_a", case_id="site_a-0001", folder=seg.parent, images=images,
                           mask=seg, brain_mask=seg, key="k" * 64)
    params = ImageInputParams(slices=3, size=16, sequences=["t1c"])
    work = tmp_path / "work"
    stage = ImageInput(preprocessed, params, work)
    path = run(stage)
    assert path.parent == stage.folder() == work / "inputs" / "site_a" / "site_a-0001" / short(stage.key())
    assert all(p.is_file() for p in stage.outputs(stage.folder()))
    first = path.stat().st_mtime_ns
    assert run(ImageInput(preprocessed, params, work)) == path and path.stat().st_mtime_ns == first  # reused
    assert np.array_equal(load_image_input(path), build_image_input(images, seg, params))
    other = run(ImageInput(preprocessed, params.model_copy(update={"size": 24}), work))
    channels = len(params.sequences) + len(params.mask_channels)  # t1c, then the default region masks
    assert other != path and load_image_input(other).shape == (3, channels, 24, 24)
    changed = Patient(**{**preprocessed.__dict__, "key": "j" * 64})
    assert run(ImageInput(changed, params, work)) != path  # new preprocessing, new input


def test_a_sequence_the_patient_lacks_stays_a_zero_channel_through_augmentation_and_is_recorded(
    tmp_path: Path, patient: tuple[dict[str, Path], Path]
) -> None:
    import torch

    from survival_model.config import AugmentParams
    from survival_model.training.data import augment_sample

    images, seg = patient  # t1c and t2f: no t1n, no t2w
    preprocessed = Patient(site="site_a", case_id="site_a-0002", folder=seg.parent, images=images,
                           mask=seg, brain_mask=seg, key="k" * 64)
    params = ImageInputParams(slices=3, size=16)  # the four sequences, then the region masks
    path = run(ImageInput(preprocessed, params, tmp_path / "work"))
    manifest = read_json(path.parent / "manifest.json")
    assert manifest["absent_sequences"] == ["t1n", "t2w"]
    x = torch.from_numpy(load_image_input(path))
    strong = AugmentParams(flip_probability=1.0, rotation_degrees=30.0, intensity_scale=0.5, intensity_shift=0.5)
    out = augment_sample(x, strong, sequence_channels=4, generator=torch.Generator().manual_seed(3))
    assert not out[:, [0, 2]].any()  # t1n and t2w: zeros, whatever the jitter
    assert out[:, 1].any() and out[:, 3].any() and not torch.equal(out[:, 1], x[:, 1])


def test_a_sequence_no_training_patient_has_is_refused(patient: tuple[dict[str, Path], Path]) -> None:
    images, _ = patient
    one = {"t1c": images["t1c"]}
    counts = check_sequences_present(ImageInputParams(sequences=["t1c", "t2f"]), {"a": images, "b": one})
    assert counts == {"t1c": 2, "t2f": 1}
    with pytest.raises(ConfigError, match=r"lists t1n, t2w, which none of the 2 patient\(s\) .* remove t1n, t2w "
                                          r"from training.inputs.sequences \(patients per sequence: t1n 0, t1c 2"):
        check_sequences_present(ImageInputParams(), {"a": images, "b": one})
