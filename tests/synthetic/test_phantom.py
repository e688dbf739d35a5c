"""Tests of the analytic MRI head phantom (survival_model.synthetic.phantom)."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from survival_model.synthetic import phantom as ph

SMALL = ph.Grid.centred((48, 48, 31), (5.0, 5.0, 5.0))
MEDIUM = ph.Grid.centred((64, 64, 40), (3.5, 3.5, 3.5))
FLIP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _patient(seed: int, n: int = 3) -> tuple[ph.Head, list[ph.Lesion]]:
    rng = np.random.default_rng(seed)
    head = ph.sample_head(rng)
    return head, ph.sample_lesions(head, n, rng)


def _rich_lesions(head: ph.Head, seed: int) -> list[ph.Lesion]:
    """Two large necrotic lesions with edema (visible on a 3.5 mm grid)."""
    rng = np.random.default_rng(seed)
    lesions = ph.sample_lesions(head, 2, rng, radius_median_mm=11.0, radius_range_mm=(10.0, 12.0))
    return [dataclasses.replace(les, necrosis_fraction=0.55, edema_mm=10.0) for les in lesions]


# ------------------------------------------------------------------------------------------------
# Grid and motion
# ------------------------------------------------------------------------------------------------
def test_grid_centred_maps_indices_like_simpleitk() -> None:
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    grid = ph.Grid.centred((7, 5, 3), (1.0, 2.0, 3.0), direction)
    centre = grid.index_to_physical([3.0, 2.0, 1.0])
    np.testing.assert_allclose(centre, 0.0, atol=1e-12)
    pts = grid.physical_points(np.float64)
    assert pts.shape == (3, 5, 7, 3)
    d = np.array(direction).reshape(3, 3)
    expected = np.array(grid.origin) + d @ (np.array([1.0, 2.0, 3.0]) * np.array([6, 1, 2]))
    np.testing.assert_allclose(pts[2, 1, 6], expected, atol=1e-12)
    np.testing.assert_allclose(grid.physical_to_index(pts[2, 1, 6]), [6, 1, 2], atol=1e-9)
    assert grid.physical_points().dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (4, 4, 0), "spacing": (1.0, 1.0, 1.0)}, "size"),
        ({"size": (4, 4, 4), "spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"size": (4, 4, 4), "spacing": (1.0, -1.0, 1.0)}, "spacing"),
        (
            {"size": (4, 4, 4), "spacing": (1.0, 1.0, 1.0), "direction": (1.0, 0, 0, 0, 2.0, 0, 0, 0, 1.0)},
            "orthonormal",
        ),
        ({"size": (4, 4, 4), "spacing": (1.0, 1.0, 1.0), "direction": (1.0, 0.0, 0.0)}, "direction"),
    ],
)
def test_grid_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ph.Grid(**kwargs)  # type: ignore[arg-type]


def test_motion_inverse_and_sampling() -> None:
    motion = ph.RigidMotion((2.0, -1.0, 3.0), (1.0, 2.0, -3.0))
    pts = np.random.default_rng(0).normal(0, 50, (10, 3))
    np.testing.assert_allclose(motion.inverse_apply(motion.apply(pts)), pts, atol=1e-9)
    r = motion.rotation_matrix()
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    sampled = ph.sample_motion(np.random.default_rng(1), max_rotation_deg=2.0, max_translation_mm=1.5)
    assert all(abs(v) <= 2.0 for v in sampled.rotation_deg)
    assert all(abs(v) <= 1.5 for v in sampled.translation_mm)
    assert ph.RigidMotion.identity().apply([[1.0, 2.0, 3.0]]).tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="max_rotation_deg"):
        ph.sample_motion(np.random.default_rng(1), max_rotation_deg=-1.0)


# ------------------------------------------------------------------------------------------------
# Anatomy
# ------------------------------------------------------------------------------------------------
def test_head_is_cheap_and_picklable() -> None:
    head, lesions = _patient(0)
    assert pickle.loads(pickle.dumps(head)) == head
    assert pickle.loads(pickle.dumps(lesions)) == lesions
    assert len(pickle.dumps(head)) < 1000


def test_tissues_have_expected_layout() -> None:
    head, _ = _patient(1)
    tis = ph.render_tissues(head, MEDIUM)
    assert tis.dtype == np.uint8
    assert tis.shape == MEDIUM.shape
    counts = np.bincount(tis.ravel(), minlength=ph.N_TISSUES)
    for code in (ph.SCALP, ph.SKULL, ph.CSF, ph.GM, ph.WM, ph.VENTRICLE, ph.DEEP_GM):
        assert counts[code] > 0, ph.TISSUE_NAMES[code]
    # Along the left-right axis through the centre: air, scalp, skull, ..., brain, ..., skull, scalp, air.
    line = tis[20, 32, :]
    assert line[0] == ph.AIR
    assert line[-1] == ph.AIR
    first_scalp = int(np.argmax(line == ph.SCALP))
    first_skull = int(np.argmax(line == ph.SKULL))
    first_brain = int(np.argmax(np.isin(line, ph.PARENCHYMA_TISSUES)))
    assert first_scalp < first_skull < first_brain
    # Ventricles sit near the midline, inside the brain.
    vz, vy, vx = np.nonzero(tis == ph.VENTRICLE)
    vent_x = MEDIUM.index_to_physical(np.stack([vx, vy, vz], axis=1).astype(float))[:, 0]
    assert np.max(np.abs(vent_x)) < 30.0
    # Brain parenchyma volume is adult-like (0.8-1.6 litres).
    voxel = float(np.prod(MEDIUM.spacing))
    brain_ml = np.isin(tis, ph.PARENCHYMA_TISSUES).sum() * voxel / 1000.0
    assert 800.0 < brain_ml < 1600.0


def test_infratentorial_region() -> None:
    head, _ = _patient(2)
    s = np.array(head.semi_axes_mm) / np.array([76.0, 95.0, 73.0])
    cerebellum = np.array([25.0, 45.0, -40.0]) * s
    frontal = np.array([20.0, -50.0, 20.0]) * s
    occipital_above_tentorium = np.array([20.0, 60.0, 10.0]) * s
    flags = head.is_infratentorial(np.stack([cerebellum, frontal, occipital_above_tentorium]))
    assert flags.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="shape"):
        head.is_infratentorial(np.zeros((4, 2)))


def test_different_heads_differ_and_same_seed_repeats() -> None:
    a = ph.render_tissues(ph.sample_head(np.random.default_rng(3)), SMALL)
    b = ph.render_tissues(ph.sample_head(np.random.default_rng(3)), SMALL)
    c = ph.render_tissues(ph.sample_head(np.random.default_rng(4)), SMALL)
    assert np.array_equal(a, b)
    assert np.mean(a != c) > 0.02


def test_brain_mask_contains_tumours_and_not_skull() -> None:
    head, lesions = _patient(5, n=4)
    mask = ph.brain_mask(head, MEDIUM)
    tis = ph.render_tissues(head, MEDIUM)
    labels = ph.render_labels(head, lesions, MEDIUM)
    assert mask.dtype == np.bool_
    assert not np.any(mask & np.isin(tis, (ph.SKULL, ph.SCALP, ph.AIR)))
    assert np.all(mask[labels > 0])


# ------------------------------------------------------------------------------------------------
# Lesions
# ------------------------------------------------------------------------------------------------
def test_labels_are_canonical_codes() -> None:
    head = ph.sample_head(np.random.default_rng(6))
    lesions = _rich_lesions(head, 6)
    labels = ph.render_labels(head, lesions, MEDIUM)
    assert labels.dtype == np.uint8
    assert labels.shape == MEDIUM.shape
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(("seed", "n"), [(7, 6), (8, 12)])
def test_tumour_components_equal_lesion_count_on_1mm_grid(seed: int, n: int) -> None:
    head, lesions = _patient(seed, n=n)
    assert len(lesions) == n
    grid = ph.Grid.centred((170, 200, 150), (1.0, 1.0, 1.0))
    labels = ph.render_labels(head, lesions, grid)
    tumour = np.isin(labels, (ph.LABEL_NETC, ph.LABEL_ET))
    _, count = ndimage.label(tumour, structure=np.ones((3, 3, 3), dtype=bool))
    assert count == n


def test_lesions_stay_inside_the_brain() -> None:
    for seed in range(9, 13):
        head, lesions = _patient(seed, n=8)
        centres = np.array([les.centre_mm for les in lesions])
        assert np.all(np.isin(ph.tissues_at_points(head, centres), ph.PARENCHYMA_TISSUES))
        tis = ph.render_tissues(head, MEDIUM)
        labels = ph.render_labels(head, lesions, MEDIUM)
        assert np.all(np.isin(tis[labels > 0], ph.INTRACRANIAL_TISSUES))
        assert np.all(np.isin(tis[labels == ph.LABEL_SNFH], ph.PARENCHYMA_TISSUES))
        radii = [les.radius_mm for les in lesions]
        assert all(3.0 <= r <= 25.0 for r in radii)
        assert radii == sorted(radii, reverse=True)
        for i, a in enumerate(lesions):
            for b in lesions[i + 1 :]:
                gap = np.linalg.norm(np.subtract(a.centre_mm, b.centre_mm)) - a.max_radius_mm - b.max_radius_mm
                assert gap >= 3.0


def test_infratentorial_share_is_realistic() -> None:
    flags: list[bool] = []
    for seed in range(20):
        head, lesions = _patient(100 + seed, n=5)
        flags += [s.infratentorial for s in ph.lesion_summaries(head, lesions)]
    share = float(np.mean(flags))
    assert 0.03 <= share <= 0.35


def test_sample_lesions_rejects_bad_arguments() -> None:
    head = ph.sample_head(np.random.default_rng(13))
    rng = np.random.default_rng(0)
    for n in (0, 16):
        with pytest.raises(ValueError, match=r"n must be an integer in 1\.\.15"):
            ph.sample_lesions(head, n, rng)
    with pytest.raises(ValueError, match="could not place a lesion"):
        ph.sample_lesions(head, 15, rng, radius_median_mm=25.0, radius_range_mm=(25.0, 25.0), max_attempts=4)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("radius_mm", 0.0, "radius_mm"),
        ("necrosis_fraction", 0.9, "necrosis_fraction"),
        ("rim_irregularity", 1.5, "rim_irregularity"),
        ("heterogeneity", -0.1, "heterogeneity"),
        ("edema_mm", -1.0, "edema_mm"),
    ],
)
def test_lesion_rejects_bad_arguments(field: str, value: float, match: str) -> None:
    base = ph.Lesion((0.0, 0.0, 0.0), 5.0)
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(base, **{field: value})  # type: ignore[arg-type]


def _wm_centre(head: ph.Head) -> tuple[float, float, float]:
    """A white-matter point with room for a 10 mm lesion."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(-40, 40, 3) * np.array([0.8, 1.0, 0.6]) + np.array([0.0, -10.0, 15.0])
        ball = p + 11.0 * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
        if ph.tissues_at_points(head, p) == ph.WM and np.all(
            np.isin(ph.tissues_at_points(head, ball), ph.INTRACRANIAL_TISSUES)
        ):
            return (float(p[0]), float(p[1]), float(p[2]))
    raise AssertionError("no white-matter point found")


def test_region_volumes_of_a_sphere_match_the_formula() -> None:
    head = ph.sample_head(np.random.default_rng(14))
    centre = _wm_centre(head)
    solid = ph.Lesion(centre, radius_mm=8.0, shape_seed=3)
    vols = ph.region_volumes(head, [solid], resolution_mm=0.5)
    sphere = 4.0 / 3.0 * math.pi * 8.0**3
    assert vols["ET"] == pytest.approx(sphere, rel=0.05)
    assert vols["NETC"] == 0.0
    assert vols["SNFH"] == 0.0
    assert vols["TC"] == vols["ET"]
    assert vols["WT"] == vols["ET"]

    necrotic = dataclasses.replace(solid, necrosis_fraction=0.5, edema_mm=6.0)
    vols = ph.region_volumes(head, [necrotic], resolution_mm=0.5)
    assert vols["NETC"] == pytest.approx(4.0 / 3.0 * math.pi * 4.0**3, rel=0.05)
    assert vols["TC"] == pytest.approx(sphere, rel=0.05)
    assert vols["SNFH"] > 0.2 * sphere
    assert vols["WT"] == pytest.approx(vols["TC"] + vols["SNFH"])


def test_lesion_summaries_agree_with_region_volumes() -> None:
    head, lesions = _patient(15, n=3)
    lesions = [dataclasses.replace(les, rim_irregularity=1.0, necrosis_fraction=0.5, edema_mm=0.0) for les in lesions]
    summaries = ph.lesion_summaries(head, lesions)
    vols = ph.region_volumes(head, lesions, resolution_mm=0.5)
    assert [s.index for s in summaries] == [0, 1, 2]
    assert sum(s.et_mm3 for s in summaries) == pytest.approx(vols["ET"], rel=0.05)
    assert sum(s.netc_mm3 for s in summaries) == pytest.approx(vols["NETC"], rel=0.08)
    assert all(s.tumour_mm3 == pytest.approx(s.et_mm3 + s.netc_mm3) for s in summaries)


def test_region_volumes_count_overlapping_boxes_once() -> None:
    head, lesions = _patient(16, n=2)
    close = [dataclasses.replace(les, edema_mm=20.0) for les in lesions]
    union = ph.region_volumes(head, close, resolution_mm=1.0)
    grid = ph.Grid.centred((161, 201, 161), (1.0, 1.0, 1.0))
    labels = ph.render_labels(head, close, grid)
    for key, code in (("ET", ph.LABEL_ET), ("NETC", ph.LABEL_NETC), ("SNFH", ph.LABEL_SNFH)):
        assert union[key] == pytest.approx(float(np.sum(labels == code)), rel=1e-6, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# Geometry of rendering: orientation, anisotropy, motion
# ------------------------------------------------------------------------------------------------
def test_flipped_anisotropic_grid_gives_the_same_labels_at_the_same_points() -> None:
    head, lesions = _patient(17, n=5)
    ref = ph.Grid.centred((49, 49, 31), (5.0, 5.0, 5.0))
    other = ph.Grid.centred((97, 49, 61), (2.5, 5.0, 2.5), FLIP)
    lab_ref = ph.render_labels(head, lesions, ref)
    lab_other = ph.render_labels(head, lesions, other)
    tis_ref = ph.render_tissues(head, ref)
    tis_other = ph.render_tissues(head, other)
    k, j, i = np.meshgrid(np.arange(31), np.arange(49), np.arange(49), indexing="ij")
    idx_ref = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    idx_other = np.rint(other.physical_to_index(ref.index_to_physical(idx_ref))).astype(int)
    ii, jj, kk = idx_other[:, 0], idx_other[:, 1], idx_other[:, 2]
    assert np.all((ii >= 0) & (ii < 97) & (jj >= 0) & (jj < 49) & (kk >= 0) & (kk < 61))
    np.testing.assert_allclose(other.index_to_physical(idx_other), ref.index_to_physical(idx_ref), atol=1e-6)
    # The flip really happened: index 0 of the other grid is on the patient's left, not right.
    assert other.index_to_physical([0, 0, 0])[0] > 0 > ref.index_to_physical([0, 0, 0])[0]
    assert np.array_equal(lab_ref.ravel(), lab_other[kk, jj, ii])
    assert np.array_equal(tis_ref.ravel(), tis_other[kk, jj, ii])
    assert np.count_nonzero(lab_ref) > 0


def test_motion_translation_shifts_the_brain_mask_centroid() -> None:
    head, _ = _patient(18)
    grid = ph.Grid.centred((96, 96, 62), (2.5, 2.5, 2.5))
    shift = (6.0, -4.0, 3.0)

    def centroid(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        k, j, i = np.nonzero(mask)
        pts = grid.index_to_physical(np.stack([i, j, k], axis=1).astype(float))
        out: npt.NDArray[np.float64] = pts.mean(axis=0)
        return out

    still = centroid(ph.brain_mask(head, grid))
    moved = centroid(ph.brain_mask(head, grid, ph.RigidMotion((0.0, 0.0, 0.0), shift)))
    np.testing.assert_allclose(moved - still, shift, atol=0.5)


def test_motion_shows_the_phantom_at_the_inverse_transformed_point() -> None:
    head, _ = _patient(19)
    motion = ph.RigidMotion((4.0, -3.0, 10.0), (3.0, -2.0, 5.0))
    moved = ph.render_tissues(head, SMALL, motion)
    pts = SMALL.physical_points(np.float64).reshape(-1, 3)
    expected = ph.tissues_at_points(head, motion.inverse_apply(pts)).reshape(SMALL.shape)
    assert np.mean(moved == expected) > 0.999
    assert np.mean(moved != ph.render_tissues(head, SMALL)) > 0.02


# ------------------------------------------------------------------------------------------------
# Sequences
# ------------------------------------------------------------------------------------------------
def _means(img: npt.NDArray[np.float32], masks: dict[str, npt.NDArray[np.bool_]]) -> dict[str, float]:
    return {name: float(img[m].mean()) for name, m in masks.items()}


def test_tissue_contrasts_per_sequence() -> None:
    head = ph.sample_head(np.random.default_rng(20))
    lesions = _rich_lesions(head, 20)
    tis = ph.render_tissues(head, MEDIUM)
    labels = ph.render_labels(head, lesions, MEDIUM)
    healthy = labels == 0
    masks = {
        "wm": healthy & (tis == ph.WM),
        "gm": healthy & (tis == ph.GM),
        "csf": healthy & (tis == ph.CSF),
        "vent": healthy & (tis == ph.VENTRICLE),
        "skull": tis == ph.SKULL,
        "scalp": tis == ph.SCALP,
        "et": labels == ph.LABEL_ET,
        "netc": labels == ph.LABEL_NETC,
        "snfh": labels == ph.LABEL_SNFH,
    }
    assert all(m.sum() > 5 for m in masks.values())
    case = ph.render_case(head, lesions, MEDIUM, noise_sigma=0.01, seed=0)
    t1n, t1c, t2w, t2f = (_means(case[s], masks) for s in ph.SEQUENCES)  # type: ignore[arg-type]
    assert t1n["wm"] > t1n["gm"] > t1n["csf"]
    assert t1n["scalp"] > t1n["wm"] > 3 * t1n["skull"]
    assert t1n["et"] < t1n["wm"]
    assert t1c["et"] > 1.3 * t1c["wm"]
    assert t1c["netc"] < 0.6 * t1c["et"]
    assert t2w["vent"] > t2w["gm"] > t2w["wm"]
    assert t2w["snfh"] > t2w["wm"]
    assert t2w["netc"] > t2w["wm"]
    assert t2f["vent"] < t2f["wm"] < t2f["gm"] < t2f["snfh"]
    assert t2f["csf"] < t2f["wm"]
    for s in ph.SEQUENCES:
        img = case[s]
        assert img.dtype == np.float32
        assert img.shape == MEDIUM.shape
        assert np.all(np.isfinite(img))
        assert img.min() >= 0.0
        assert 500.0 < float(np.percentile(img, 99.5)) < 3000.0


def test_rendering_is_deterministic_and_seeded() -> None:
    head, lesions = _patient(21)
    bias = {"t1n": ph.sample_bias_field(np.random.default_rng(0))}
    a = ph.render_case(head, lesions, SMALL, seed=5, bias=bias)
    b = ph.render_case(head, lesions, SMALL, seed=5, bias=bias)
    c = ph.render_case(head, lesions, SMALL, seed=6, bias=bias)
    for key in (*ph.SEQUENCES, "seg"):
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["t1n"], c["t1n"])
    assert np.array_equal(a["seg"], c["seg"])
    single = ph.render_case(head, lesions, SMALL, sequences=("t2f",), seed=5)
    assert np.array_equal(single["t2f"], a["t2f"])
    direct = ph.render_sequence(head, lesions, SMALL, "t2f", seed=ph.sequence_seed(5, "t2f"))
    assert np.array_equal(direct, a["t2f"])


def test_rician_noise_floor_in_air() -> None:
    head, lesions = _patient(22)
    sigma_rel = 0.05
    img = ph.render_sequence(head, lesions, SMALL, "t1n", noise_sigma=sigma_rel, seed=1)
    air = ph.render_tissues(head, ph.Grid.centred((48, 48, 31), (5.0, 5.0, 5.0))) == ph.AIR
    sigma = sigma_rel * 0.88 * 1000.0  # white matter of t1n is 0.88
    assert float(img[air].mean()) == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.05)
    clean = ph.render_sequence(head, lesions, SMALL, "t1n", noise_sigma=0.0, seed=1)
    assert float(clean[air].max()) == 0.0


def test_bias_field_is_smooth_bounded_and_fixed_to_the_scanner() -> None:
    bias = ph.sample_bias_field(np.random.default_rng(23), strength=0.3)
    field = bias.evaluate(MEDIUM)
    assert field.dtype == np.float32
    assert field.shape == MEDIUM.shape
    assert float(field.mean()) == pytest.approx(1.0, abs=0.06)
    assert math.exp(-0.3) - 1e-5 <= float(field.min())
    assert float(field.max()) <= math.exp(0.3) + 1e-5
    assert float(field.max() - field.min()) > 0.15
    assert np.array_equal(bias.evaluate(MEDIUM, ph.RigidMotion((5.0, 0.0, 0.0), (9.0, 0.0, 0.0))), field)
    assert np.all(ph.BiasField.identity().evaluate(SMALL) == 1.0)
    with pytest.raises(ValueError, match="strength"):
        ph.sample_bias_field(np.random.default_rng(0), strength=-0.1)
    # Same field on any grid: compare a coarse grid with the medium one at shared physical points.
    coarse = ph.Grid.centred((33, 33, 21), (7.0, 7.0, 7.0))
    assert float(np.abs(bias.evaluate(coarse)[10, 16, 16] - field[20, 32, 32])) < 0.01


def test_bias_multiplies_the_image() -> None:
    head, lesions = _patient(24)
    bias = ph.sample_bias_field(np.random.default_rng(24))
    plain = ph.render_sequence(head, lesions, SMALL, "t1c", noise_sigma=0.0, seed=0)
    biased = ph.render_sequence(head, lesions, SMALL, "t1c", noise_sigma=0.0, seed=0, bias=bias)
    np.testing.assert_allclose(biased, plain * bias.evaluate(SMALL), rtol=1e-5, atol=1e-3)


def test_thick_slices_average_sub_samples_through_the_slice() -> None:
    head, lesions = _patient(25)
    thick = ph.Grid.centred((40, 40, 12), (4.0, 4.0, 12.0))
    fine = ph.Grid.centred((40, 40, 36), (4.0, 4.0, 4.0))
    kw = {"noise_sigma": 0.0, "seed": 0, "psf_fwhm_mm": 0.0}
    img_thick = ph.render_sequence(head, lesions, thick, "t2w", **kw)  # type: ignore[arg-type]
    img_fine = ph.render_sequence(head, lesions, fine, "t2w", **kw)  # type: ignore[arg-type]
    expected = img_fine.reshape(12, 3, 40, 40).mean(axis=1)
    np.testing.assert_allclose(img_thick, expected, rtol=1e-4, atol=1e-2)
    labels = ph.render_labels(head, lesions, thick)
    assert np.array_equal(labels, ph.render_labels(head, lesions, fine)[1::3])


def test_psf_blurs_in_physical_units() -> None:
    head, lesions = _patient(26)
    grid = ph.Grid.centred((60, 60, 40), (4.0, 4.0, 4.0))
    sharp = ph.render_sequence(head, lesions, grid, "t1n", noise_sigma=0.0, seed=0, psf_fwhm_mm=1.0)
    blurred = ph.render_sequence(head, lesions, grid, "t1n", noise_sigma=0.0, seed=0, psf_fwhm_mm=8.0)
    assert float(np.abs(np.diff(blurred, axis=2)).mean()) < 0.8 * float(np.abs(np.diff(sharp, axis=2)).mean())
    assert float(blurred.sum()) == pytest.approx(float(sharp.sum()), rel=0.01)


def test_skull_stripped_case_is_zero_outside_the_brain() -> None:
    head, lesions = _patient(27)
    motions = {"t2w": ph.RigidMotion((0.0, 0.0, 5.0), (4.0, 0.0, 0.0))}
    case = ph.render_case(head, lesions, MEDIUM, motions=motions, skull_stripped=True, seed=3)
    assert set(case) == {*ph.SEQUENCES, "seg"}
    assert case["seg"].dtype == np.uint8
    still = ph.brain_mask(head, MEDIUM)
    assert np.all(case["t1c"][~still] == 0.0)
    assert float(case["t1c"][still].min()) > 0.0
    moved = ph.brain_mask(head, MEDIUM, motions["t2w"])
    assert np.all(case["t2w"][~moved] == 0.0)
    assert float(case["t2w"][moved].min()) > 0.0
    assert np.array_equal(case["seg"], ph.render_labels(head, lesions, MEDIUM))


def test_rendering_rejects_bad_arguments() -> None:
    head, lesions = _patient(28, n=1)
    with pytest.raises(ValueError, match="unknown sequence 'flair'"):
        ph.render_sequence(head, lesions, SMALL, "flair", seed=0)
    with pytest.raises(ValueError, match="unknown sequence"):
        ph.render_case(head, lesions, SMALL, sequences=("t1n", "dwi"))
    with pytest.raises(ValueError, match="motions has unknown sequence"):
        ph.render_case(head, lesions, SMALL, motions={"T1C": ph.RigidMotion.identity()})
    with pytest.raises(ValueError, match="noise_sigma"):
        ph.render_sequence(head, lesions, SMALL, "t1n", noise_sigma=-1.0, seed=0)
    with pytest.raises(ValueError, match="resolution_mm"):
        ph.region_volumes(head, lesions, resolution_mm=0.0)
