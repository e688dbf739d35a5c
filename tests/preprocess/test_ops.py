"""Tests of the pure image operations of preprocessing (survival_model.preprocess.ops), on phantom
images rendered here with fixed seeds."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk

from survival_model.config import N4Params, RegistrationParams
from survival_model.preprocess import ops
from survival_model.synthetic import phantom as ph
from survival_model.synthetic.sites import SITES, site_grid
from tests.preprocess.images import dice, grid_of, to_image

FLIP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
PERMUTED = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0)  # axes point A, I, R


@pytest.fixture(scope="module")
def patient() -> tuple[ph.Head, list[ph.Lesion]]:
    rng = np.random.default_rng(11)
    head = ph.sample_head(rng)
    lesions = ph.sample_lesions(head, 3, rng, radius_median_mm=10.0, radius_range_mm=(8.0, 14.0))
    return head, [dataclasses.replace(les, necrosis_fraction=0.5, edema_mm=8.0) for les in lesions]


# --------------------------------------------------------------------------------------------------
# Orientation and grids
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LAI", "ASL"])
@pytest.mark.parametrize("direction", [FLIP, PERMUTED])
def test_reorient_gives_declared_direction_and_keeps_physical_positions(
    orientation: str, direction: tuple[float, ...]
) -> None:
    grid = ph.Grid((7, 6, 5), (0.9, 1.3, 3.0), (12.0, -4.0, 30.0), direction)
    values = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    image = to_image(values, grid)
    out = ops.reorient(image, orientation)
    np.testing.assert_allclose(out.GetDirection(), ops.orientation_direction(orientation), atol=1e-12)
    assert sorted(out.GetSpacing()) == pytest.approx(sorted(image.GetSpacing()))
    for index in [(0, 0, 0), (6, 5, 4), (3, 1, 2), (5, 4, 0)]:
        point = image.TransformIndexToPhysicalPoint(index)
        moved = out.TransformPhysicalPointToIndex(point)
        np.testing.assert_allclose(out.TransformIndexToPhysicalPoint(moved), point, atol=1e-9)
        assert out[moved] == image[index]


def test_orientation_direction_of_lps_is_identity_and_ras_flips_x_and_y() -> None:
    assert ops.orientation_direction("lps") == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert ops.orientation_direction("RAS") == FLIP


def test_target_grid_covers_the_reference_at_the_target_spacing() -> None:
    reference = sitk.Image([40, 36, 10], sitk.sitkUInt8)
    reference.SetSpacing((0.9, 0.9, 3.0))
    reference.SetDirection(FLIP)
    reference.SetOrigin((20.0, 15.0, -14.0))
    grid = ops.target_grid(reference, (2.0, 2.0, 2.0), "LPS")
    assert grid.GetDirection() == ops.orientation_direction("LPS")
    assert grid.GetSpacing() == (2.0, 2.0, 2.0)
    ref_lo = np.min(ops._corners(reference), axis=0)
    ref_hi = np.max(ops._corners(reference), axis=0)
    lo = np.min(ops._corners(grid), axis=0)
    hi = np.max(ops._corners(grid), axis=0)
    assert np.all(lo <= ref_lo + 1e-6) and np.all(hi >= ref_hi - 1e-6)
    assert np.all(hi - lo < ref_hi - ref_lo + 2.0 + 1e-6)  # no more than one extra voxel per axis
    np.testing.assert_allclose((lo + hi) / 2, (ref_lo + ref_hi) / 2, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolator", ["nearest", "label_gaussian"])
def test_label_resampling_never_changes_a_label_and_keeps_the_tumour_volume(
    patient: tuple[ph.Head, list[ph.Lesion]], interpolator: str
) -> None:
    head, lesions = patient
    grid = ph.Grid.centred((96, 96, 40), (1.8, 1.8, 3.5), FLIP)
    seg = to_image(ph.render_labels(head, lesions, grid), grid)
    target = ops.target_grid(ops.reorient(seg, "LPS"), (2.5, 2.5, 2.5), "LPS")
    out = ops.resample_onto(ops.reorient(seg, "LPS"), target, None, interpolator)  # type: ignore[arg-type]
    assert out.GetPixelID() == sitk.sitkUInt8
    before, after = ops.region_volumes_mm3(seg), ops.region_volumes_mm3(out)
    assert set(np.unique(sitk.GetArrayViewFromImage(out))) <= set(np.unique(sitk.GetArrayViewFromImage(seg)))
    assert before["wt"] > 5000
    assert after["wt"] == pytest.approx(before["wt"], rel=0.08)
    for region in ("netc", "snfh", "et"):
        assert after[region] == pytest.approx(before[region], rel=0.4)  # thin rims: coarser grid


def test_resample_mask_is_binary_and_follows_a_transform() -> None:
    grid = ph.Grid.centred((40, 40, 40), (2.0, 2.0, 2.0))
    array = np.zeros((40, 40, 40), dtype=np.uint8)
    array[10:30, 10:30, 10:30] = 1
    mask = to_image(array, grid)
    shift = sitk.TranslationTransform(3, (4.0, 0.0, 0.0))  # output point p samples the mask at p + 4 mm
    out = ops.resample_mask(mask, mask, shift)
    values = sitk.GetArrayViewFromImage(out)
    assert set(np.unique(values)) == {0, 1}
    assert values[20, 20, 8:28].all() and not values[20, 20, 28:].any() and not values[20, 20, :7].any()


# --------------------------------------------------------------------------------------------------
# N4
# --------------------------------------------------------------------------------------------------


def test_shrink_factors_adapt_to_anisotropic_voxels_and_a_maximum_spacing() -> None:
    assert ops.shrink_factors((1.0, 1.0, 1.0), 8, 8.0) == (8, 8, 8)
    assert ops.shrink_factors((0.9, 0.9, 3.0), 8, 8.0) == (8, 8, 2)
    assert ops.shrink_factors((2.5, 2.5, 2.5), 8, 8.0) == (3, 3, 3)
    assert ops.shrink_factors((5.0, 5.0, 5.0), 4, 8.0) == (1, 1, 1)


def test_n4_reduces_low_frequency_nonuniformity_and_recovers_the_field(
    patient: tuple[ph.Head, list[ph.Lesion]],
) -> None:
    head, lesions = patient
    grid = ph.Grid.centred((80, 80, 52), (3.0, 3.0, 3.0))
    bias = ph.BiasField(seed=6, strength=0.3)
    flat = to_image(ph.render_sequence(head, lesions, grid, "t1n", noise_sigma=0.03, seed=1), grid)
    image = to_image(ph.render_sequence(head, lesions, grid, "t1n", bias=bias, noise_sigma=0.03, seed=1), grid)
    brain = ph.brain_mask(head, grid)
    mask = to_image(brain.astype(np.uint8), grid)
    result = ops.n4_correct(image, mask, N4Params(shrink_factor=2, iterations=[50, 50, 50]))
    assert result.corrected.GetPixelID() == sitk.sitkFloat32 and ops.same_grid(result.corrected, image)
    floor = ops.nonuniformity(flat, mask)  # tissue composition alone, no bias field
    before, after = ops.nonuniformity(image, mask), ops.nonuniformity(result.corrected, mask)
    assert before > 1.5 * floor
    assert after - floor < 0.2 * (before - floor)
    true_log = np.log(bias.evaluate(grid))[brain]
    estimated = sitk.GetArrayViewFromImage(result.log_field)[brain]
    assert np.corrcoef(true_log, estimated)[0, 1] > 0.95
    residual = estimated - true_log
    assert np.std(residual - residual.mean()) < 0.25 * np.std(true_log)
    assert ops.field_ratio(result.log_field, mask) > 1.2  # the strength-0.3 field spans about exp(0.6)


def test_nonuniformity_grows_with_a_bias_field(patient: tuple[ph.Head, list[ph.Lesion]]) -> None:
    head, lesions = patient
    grid = ph.Grid.centred((64, 64, 42), (3.75, 3.75, 3.75))
    mask = to_image(ph.brain_mask(head, grid).astype(np.uint8), grid)
    flat = to_image(ph.render_sequence(head, lesions, grid, "t1n", noise_sigma=0.0, seed=0), grid)
    biased = to_image(ph.render_sequence(head, lesions, grid, "t1n", bias=ph.BiasField(3, 0.4), noise_sigma=0.0,
                                         seed=0), grid)
    assert ops.nonuniformity(biased, mask) > 1.5 * ops.nonuniformity(flat, mask)


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------


def test_register_rigid_recovers_a_known_motion(patient: tuple[ph.Head, list[ph.Lesion]]) -> None:
    head, lesions = patient
    grid = site_grid(SITES["site_c"], (96, 96, 62), 2.5)
    motion = ph.sample_motion(np.random.default_rng(4))
    assert max(abs(v) for v in motion.rotation_deg + motion.translation_mm) > 2.0  # a real movement
    volumes = ph.render_case(head, lesions, grid, sequences=("t1c", "t2w"), motions={"t2w": motion},
                             bias=dict.fromkeys(("t1c", "t2w"), ph.BiasField(8, 0.25)), seed=3,
                             noise_sigma=0.03, psf_fwhm_mm=2.5)
    fixed, moving = to_image(volumes["t1c"], grid), to_image(volumes["t2w"], grid)
    head_mask = ops.head_mask(fixed)
    transform, result = ops.register_rigid(fixed, moving, RegistrationParams(), head_mask)
    # The registration maps a reference point p to the moving image's point of the same anatomy: T(p).
    directions = np.random.default_rng(0).standard_normal((200, 3))
    points = 70.0 * directions / np.linalg.norm(directions, axis=1)[:, None]
    expected = motion.apply(points)
    found = np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in points])
    assert np.max(np.linalg.norm(found - expected, axis=1)) < 1.5
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    cosine = (np.trace(rotation.T @ motion.rotation_matrix()) - 1) / 2
    assert math.degrees(math.acos(min(1.0, cosine))) < 1.5
    assert result.metric_after < result.metric_before < 0
    again, repeat = ops.register_rigid(fixed, moving, RegistrationParams(), head_mask)
    assert again.GetParameters() == transform.GetParameters() and repeat == result


def test_registration_metric_is_worse_for_misaligned_images() -> None:
    grid = ph.Grid.centred((48, 48, 31), (5.0, 5.0, 5.0))
    rng = np.random.default_rng(2)
    head = ph.sample_head(rng)
    image = to_image(ph.render_sequence(head, [], grid, "t1c", seed=1), grid)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    shifted = sitk.TranslationTransform(3, (15.0, 0.0, 0.0))
    params = RegistrationParams()
    assert ops.registration_metric(image, image, identity, params) < ops.registration_metric(
        image, image, shifted, params)


# --------------------------------------------------------------------------------------------------
# Brain masks
# --------------------------------------------------------------------------------------------------


def test_skull_strip_matches_the_true_brain_mask_on_a_site_b_like_image(
    patient: tuple[ph.Head, list[ph.Lesion]],
) -> None:
    head, lesions = patient
    spec = SITES["site_b"]
    grid = site_grid(spec, (96, 96, 62), 2.5)  # 2.25 x 2.25 x 7.5 mm, RAS-flipped
    volumes = ph.render_case(head, lesions, grid, sequences=("t1c", "t2w"), seed=4, noise_sigma=spec.noise_sigma,
                             bias=dict.fromkeys(("t1c", "t2w"), ph.BiasField(6, spec.bias_strength)),
                             scale=spec.intensity_scale, psf_fwhm_mm=2.5)
    t1c = ops.reorient(to_image(volumes["t1c"], grid), "LPS")
    work = ops.target_grid(t1c, (2.0, 2.0, 2.0), "LPS")
    t1_work = ops.resample_onto(t1c, work)
    t2_work = ops.resample_onto(ops.reorient(to_image(volumes["t2w"], grid), "LPS"), work)
    truth = ph.brain_mask(head, grid_of(work))
    with_t2 = ops.compute_brain_mask(t1_work, t2_work)
    assert with_t2.GetPixelID() == sitk.sitkUInt8 and ops.same_grid(with_t2, work)
    assert dice(sitk.GetArrayViewFromImage(with_t2), truth) >= 0.9
    t1_only = ops.compute_brain_mask(t1_work)
    assert dice(sitk.GetArrayViewFromImage(t1_only), truth) >= 0.8
    with pytest.raises(ValueError, match="same grid"):
        ops.compute_brain_mask(t1_work, t2_work[2:, :, :])


def test_nonzero_mask_fills_holes_of_a_skull_stripped_image() -> None:
    array = np.zeros((20, 20, 20), dtype=np.float32)
    array[4:16, 4:16, 4:16] = 5.0
    array[8:12, 8:12, 8:12] = 0.0  # dark inside, e.g. CSF exactly 0
    mask = ops.nonzero_mask(sitk.GetImageFromArray(array))
    assert np.count_nonzero(sitk.GetArrayViewFromImage(mask)) == 12**3


def test_head_depth_is_positive_inside_the_head_even_when_the_field_of_view_cuts_the_neck(
    patient: tuple[ph.Head, list[ph.Lesion]],
) -> None:
    head, lesions = patient
    grid = ph.Grid.centred((48, 48, 31), (5.0, 5.0, 5.0))
    image = to_image(ph.render_sequence(head, lesions, grid, "t1c", seed=2), grid)
    depth = sitk.GetArrayFromImage(ops.head_depth_mm(image))
    brain = ph.brain_mask(head, grid)
    assert np.all(depth[brain] > 0)
    assert depth[0, 0, 0] <= 0 and depth[:, 24, 24].max() > 40


# --------------------------------------------------------------------------------------------------
# Cropping, normalisation, volumes
# --------------------------------------------------------------------------------------------------


def test_crop_keeps_the_whole_mask_with_the_margin() -> None:
    grid = ph.Grid((60, 50, 40), (1.0, 2.0, 2.5), (5.0, 6.0, 7.0), FLIP)
    array = np.zeros((40, 50, 60), dtype=np.uint8)
    array[10:20, 5:30, 30:58] = 1
    mask = to_image(array, grid)
    box = ops.mask_bounding_box(mask, 10.0)
    cropped = ops.crop_to_mask(mask, box)
    values = sitk.GetArrayViewFromImage(cropped)
    assert np.count_nonzero(values) == np.count_nonzero(array)
    assert box == ((20, 0, 6), (40, 35, 18))  # x: 30-10 .. 59 (clipped), y: 5-5 -> 0, z: 10-4 .. 19+4
    first = tuple(int(v) for v in box[0])
    np.testing.assert_allclose(cropped.GetOrigin(), mask.TransformIndexToPhysicalPoint(first))
    assert cropped.GetDirection() == mask.GetDirection()
    with pytest.raises(ValueError, match="empty"):
        ops.mask_bounding_box(mask * 0, 5.0)


@pytest.mark.parametrize("clip", [None, (1.0, 99.0)])
def test_normalise_z_scores_inside_the_mask_and_zeroes_outside(clip: tuple[float, float] | None) -> None:
    rng = np.random.default_rng(3)
    array = (rng.gamma(4.0, 100.0, (20, 30, 30)) + 50).astype(np.float32)
    inside = np.zeros(array.shape, dtype=bool)
    inside[3:17, 5:25, 5:25] = True
    image = sitk.GetImageFromArray(array)
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    out, record = ops.normalise(image, mask, clip)
    values = sitk.GetArrayViewFromImage(out)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert np.all(values[~inside] == 0)
    assert values[inside].mean() == pytest.approx(0.0, abs=1e-4)
    assert values[inside].std() == pytest.approx(1.0, abs=1e-4)
    if clip is not None:
        assert record.clip_high == pytest.approx(np.percentile(array[inside], 99.0))
        assert values[inside].max() == pytest.approx((record.clip_high - record.mean) / record.std, rel=1e-5)


def test_normalise_keeps_an_enhancing_lesion_and_takes_its_statistics_from_the_normal_brain() -> None:
    rng = np.random.default_rng(4)
    array = rng.normal(500.0, 50.0, (20, 30, 30)).astype(np.float32)
    inside = np.zeros(array.shape, dtype=bool)
    inside[3:17, 5:25, 5:25] = True
    lesion = np.zeros(array.shape, dtype=np.uint8)
    lesion[8:12, 12:18, 12:18] = 3  # 144 voxels, 2.6 % of the brain: above the 99.5th percentile
    array[lesion > 0] = 1500.0  # enhancing: far brighter than any normal tissue
    image, mask = sitk.GetImageFromArray(array), sitk.GetImageFromArray(inside.astype(np.uint8))
    kept, record = ops.normalise(image, mask, (0.5, 99.5), sitk.GetImageFromArray(lesion))
    values = sitk.GetArrayViewFromImage(kept)
    normal = inside & (lesion == 0)
    assert record.mean == pytest.approx(float(np.clip(array[normal], record.clip_low, record.clip_high).mean()))
    assert record.clip_high < 700  # the limits are the normal brain's ...
    assert values[lesion > 0] == pytest.approx((1500.0 - record.mean) / record.std)  # ... the lesion keeps its value
    assert values[lesion > 0].min() > 15  # about 20 normal-brain SDs above the mean: the enhancement survives
    # with the whole brain's statistics the lesion inflates the SD: its value would depend on the tumour burden
    whole, _ = ops.normalise(image, mask, (0.5, 99.5))
    assert sitk.GetArrayViewFromImage(whole)[lesion > 0].max() < 10


def test_region_volumes_count_each_region_in_mm3() -> None:
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    array[0, 0, :3] = 1
    array[1, :, :] = 2
    array[2, 0, 0] = 3
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 2.0, 0.5))
    volumes = ops.region_volumes_mm3(image)
    assert volumes == {"netc": 3.0, "snfh": 16.0, "et": 1.0, "tc": 4.0, "wt": 20.0}
