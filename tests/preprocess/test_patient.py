"""Tests of the per-patient preprocessing driver (survival_model.preprocess.patient).

Patients are rendered here with the analytic phantom the way the synthetic sites acquire them
(``sites.SITES``: grid, direction, skull, bias, motion, noise, scale) and written as canonical
ingested files (NIfTI, labels 1/2/3 on the reference t1c), so the truth (head, lesions, motions) is
known exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from survival_model.config import Acquisition, PreprocessParams
from survival_model.errors import PatientDataError
from survival_model.imageio import write_image
from survival_model.patient import Patient
from survival_model.preprocess import ops
from survival_model.preprocess.patient import SiteImaging, preprocess_patient
from survival_model.synthetic import phantom as ph
from survival_model.synthetic.sites import SITES, site_grid
from tests.preprocess.images import dice, grid_of, to_image

ACQUISITION = {
    "site_a": Acquisition(skull_stripped=True, bias_corrected=True, co_registered=True),
    "site_b": Acquisition(skull_stripped=False, bias_corrected=False, co_registered=True),
    "site_c": Acquisition(skull_stripped=False, bias_corrected=False, co_registered=False),
}
DEFAULT_GRID = ((96, 96, 62), 2.5)  # the default synthetic cohort's base grid
SMALL_GRID = ((48, 48, 31), 5.0)


@dataclasses.dataclass
class Case:
    patient: Patient
    site: SiteImaging
    head: ph.Head
    lesions: list[ph.Lesion]
    motions: dict[str, ph.RigidMotion]
    bias: ph.BiasField | None


def write_case(root: Path, site: str, seed: int, base: tuple[tuple[int, int, int], float] = DEFAULT_GRID,
               sequences: tuple[str, ...] = ph.SEQUENCES) -> Case:
    """Render one patient as ``site`` acquires it and write it as ingestion would (canonical NIfTI)."""
    spec = SITES[site]
    rng = np.random.default_rng(seed)
    head = ph.sample_head(rng)
    lesions = ph.sample_lesions(head, 2, rng, radius_median_mm=9.0)
    grid = site_grid(spec, base[0], base[1])
    bias = ph.sample_bias_field(rng, spec.bias_strength) if spec.bias_strength > 0 else None
    motions = {s: ph.sample_motion(rng) for s in sequences if s != "t1c"} if spec.motion else {}
    volumes = ph.render_case(head, lesions, grid, sequences=sequences, motions=motions,
                             bias=dict.fromkeys(sequences, bias) if bias else None, noise_sigma=spec.noise_sigma,
                             seed=seed, skull_stripped=spec.skull_stripped, scale=spec.intensity_scale,
                             psf_fwhm_mm=max(1.0, base[1]))
    root.mkdir(parents=True, exist_ok=True)
    images = {}
    for s in sequences:
        array = volumes[s] if site == "site_a" else np.rint(volumes[s]).astype(np.int16)  # as the sites store them
        images[s] = write_image(to_image(array, grid), root / f"{s}.nii.gz")
    mask = write_image(to_image(volumes["seg"], grid), root / "seg.nii.gz")
    patient = Patient(site, f"{site}-{seed}", root, images, mask, None, "ingested")
    return Case(patient, SiteImaging("t1c", ACQUISITION[site]), head, lesions, motions, bias)


def params(**changes: Any) -> PreprocessParams:
    return PreprocessParams(**{"target_spacing_mm": (2.5, 2.5, 2.5), "compress_images": True, **changes})


def fast(**changes: Any) -> PreprocessParams:
    """Settings for the small 5 mm patients, where the checks are not about accuracy."""
    return params(**{"target_spacing_mm": (5.0, 5.0, 5.0), "brain_mask_spacing_mm": 4.0,
                     "n4": {"shrink_factor": 1, "iterations": [10, 10]}, **changes})


def run(case: Case, out: Path, p: PreprocessParams) -> dict[str, Any]:
    out.mkdir(parents=True)
    return preprocess_patient(case.patient, case.site, p, out)


def read(out: Path, name: str) -> sitk.Image:
    return sitk.ReadImage(str(out / name))


@pytest.fixture(scope="module")
def site_c(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("site_c")
    case = write_case(root / "in", "site_c", 21)
    return case, run(case, root / "out", params()), root / "out"


@pytest.fixture(scope="module")
def site_b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("site_b")
    case = write_case(root / "in", "site_b", 22, sequences=("t1c", "t2w", "t2f"))
    return case, run(case, root / "out", params(label_interpolator="label_gaussian")), root / "out"


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["site_c", "site_b"])
def test_written_files_are_on_one_grid_in_the_declared_orientation(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    case, qc, out = request.getfixturevalue(fixture)
    assert json.loads(json.dumps(qc)) == qc  # JSON-serialisable as it is
    names = [*qc["files"]["sequences"].values(), qc["files"]["mask"], qc["files"]["brain_mask"]]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, qc["files"]["mask_native"]])
    assert sorted(qc["files"]["sequences"]) == sorted(case.patient.images)
    images = {name: read(out, name) for name in names}
    first = images[names[0]]
    for name, image in images.items():
        assert ops.same_grid(image, first, tolerance=1e-4), name
    assert first.GetDirection() == pytest.approx(ops.orientation_direction("LPS"))
    assert first.GetSpacing() == pytest.approx((2.5, 2.5, 2.5))
    assert list(first.GetSize()) == qc["grid"]["size"]
    assert images["seg.nii.gz"].GetPixelID() == sitk.sitkUInt8
    assert images["brain_mask.nii.gz"].GetPixelID() == sitk.sitkUInt8
    assert all(images[f].GetPixelID() == sitk.sitkFloat32 for f in qc["files"]["sequences"].values())
    # the label map at native resolution: the ingested one on the reference's own grid, reoriented, as drawn
    native = read(out, qc["files"]["mask_native"])
    ingested = ops.reorient(sitk.ReadImage(str(case.patient.mask)), "LPS")
    assert qc["files"]["mask_native"] == "seg_native.nii.gz" and native.GetPixelID() == sitk.sitkUInt8
    assert ops.same_grid(native, ingested, tolerance=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(native), sitk.GetArrayViewFromImage(ingested))


def test_declared_orientation_other_than_lps(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_b", 5, SMALL_GRID, sequences=("t1c", "t2w"))
    qc = run(case, tmp_path / "out", fast(orientation="RAS", target_spacing_mm=(4.0, 4.0, 4.0)))
    image = read(tmp_path / "out", "t2w.nii.gz")
    assert image.GetDirection() == pytest.approx(ops.orientation_direction("RAS"))
    assert qc["orientation"] == "RAS" and qc["grid"]["direction"] == list(ops.orientation_direction("RAS"))


def test_output_labels_keep_their_values_and_sit_on_the_true_tumour(
    site_c: tuple[Case, dict[str, Any], Path], site_b: tuple[Case, dict[str, Any], Path]
) -> None:
    # site B's label map has 7.5 mm slices: on 2.5 mm voxels its staircase costs overlap.
    for (case, qc, out), least in ((site_c, 0.85), (site_b, 0.75)):
        seg = read(out, "seg.nii.gz")
        values = sitk.GetArrayFromImage(seg)
        assert set(np.unique(values)) <= {0, 1, 2, 3}
        truth = ph.render_labels(case.head, case.lesions, grid_of(seg))
        assert dice(values > 0, truth > 0) > least, case.patient.site  # the label map landed on the tumour
        volumes = qc["region_volumes_mm3"]
        # label_gaussian (site B) smooths 7.5 mm slices: it loses more volume than nearest neighbour
        tolerance = 0.1 if qc["site"] == "site_c" else 0.25
        assert volumes["resampled"]["wt"] == pytest.approx(volumes["native"]["wt"], rel=tolerance)
        assert qc["tumour_volume_change"] == pytest.approx(
            abs(volumes["resampled"]["wt"] - volumes["native"]["wt"]) / volumes["native"]["wt"])
        resampling = qc["resampling"]
        assert resampling["wt_native_mm3"] == volumes["native"]["wt"]
        assert resampling["wt_change_mm3"] == pytest.approx(volumes["resampled"]["wt"] - volumes["native"]["wt"])
        assert abs(resampling["wt_change_mm3"]) <= resampling["allowance_mm3"]
        assert resampling["lesions_native"] == len(case.lesions) and resampling["lesions_vanished"] == []
        brain = sitk.GetArrayFromImage(read(out, "brain_mask.nii.gz"))
        assert np.all(brain[values > 0] == 1)  # the tumour is always inside the brain mask


# --------------------------------------------------------------------------------------------------
# Registration, N4, brain mask
# --------------------------------------------------------------------------------------------------


def test_site_c_sequences_are_registered_to_the_reference(site_c: tuple[Case, dict[str, Any], Path]) -> None:
    case, qc, out = site_c
    assert qc["registration"]["t1c"] == {"status": "reference"}
    for s, motion in case.motions.items():
        record = qc["registration"][s]
        assert record["status"] == "registered"
        assert record["metric_after"] < record["metric_before"] < 0
        # Small angles: ITK's Euler angles and translation match the phantom's motion (about the origin,
        # where the reference's centre is, within half a voxel).
        assert np.allclose(record["rotation_deg"], motion.rotation_deg, atol=0.6), s
        assert np.allclose(record["translation_mm"], motion.translation_mm, atol=1.5), s
    # After registration, the edges of the tumour agree across sequences: FLAIR edema and T1c labels.
    t2f = sitk.GetArrayFromImage(read(out, "t2f.nii.gz"))
    seg = sitk.GetArrayFromImage(read(out, "seg.nii.gz"))
    assert t2f[seg == 2].mean() > t2f[(seg == 0) & (t2f != 0)].mean() + 1.0


def test_site_c_is_bias_corrected_with_a_field_like_the_true_one(site_c: tuple[Case, dict[str, Any], Path]) -> None:
    case, qc, _ = site_c
    assert case.bias is not None
    t1c = sitk.ReadImage(str(case.patient.images["t1c"]))
    brain = ph.brain_mask(case.head, grid_of(t1c))
    low, high = np.percentile(np.log(case.bias.evaluate(grid_of(t1c))[brain]), [5, 95])
    for s in case.patient.images:
        record = qc["bias"][s]
        assert record["status"] == "corrected"
        assert record["field_p95_p5"] == pytest.approx(math.exp(high - low), rel=0.1), s
    # On T1 the low-frequency non-uniformity is mostly the field; on T2/FLAIR the anatomy's own
    # low-frequency pattern (bright CSF at the surface) can dominate it, so only T1 is checked.
    for s in ("t1c", "t1n"):
        assert qc["bias"][s]["nonuniformity_after"] < 0.8 * qc["bias"][s]["nonuniformity_before"]


@pytest.mark.parametrize(("fixture", "reads"), [("site_c", "t1n"), ("site_b", "t1c")])
def test_trained_brain_extraction_matches_the_true_brain_mask(fixture: str, reads: str,
                                                              request: pytest.FixtureRequest) -> None:
    """The default extractor (deepbet) reads the first of brain_mask.sequences the patient has (site B here
    has no T1n) and its mask, made on that sequence's grid, lands on the true brain of the output grid."""
    case, qc, out = request.getfixturevalue(fixture)
    assert qc["brain_mask"]["source"] == f"deepbet({reads})"
    assert qc["brain_mask"]["tumour_inside"] > 0.95
    assert_brain_matches_the_truth(case, qc, out, least=0.93)


def assert_brain_matches_the_truth(case: Case, qc: dict[str, Any], out: Path, least: float) -> None:
    reference = ops.reorient(sitk.ReadImage(str(case.patient.images["t1c"])), "LPS")
    full = ops.target_grid(reference, (2.5, 2.5, 2.5), "LPS")  # the uncropped output grid
    brain = ops.resample_onto(read(out, "brain_mask.nii.gz"), full, None, "nearest")
    truth = ph.brain_mask(case.head, grid_of(full))
    assert dice(sitk.GetArrayViewFromImage(brain), truth) >= least
    assert qc["brain_volume_ml"] == pytest.approx(np.count_nonzero(truth) * 2.5**3 / 1000, rel=0.15)


def test_morphological_skull_strip_matches_the_true_brain_mask(site_c: tuple[Case, dict[str, Any], Path],
                                                               tmp_path: Path) -> None:
    """The fast fallback: T1c with the registered T2w on the working grid."""
    case = site_c[0]
    qc = run(case, tmp_path / "out", params(brain_mask={"method": "morphological"}))
    assert qc["brain_mask"]["source"] == "skull_strip(t1c+t2w)"
    assert_brain_matches_the_truth(case, qc, tmp_path / "out", least=0.9)


def test_a_one_sequence_site_with_skull_gets_an_anatomical_brain_mask(tmp_path: Path) -> None:
    """T1c alone, skull on (the real user's case): the trained extractor reads it and the brain is the brain."""
    case = write_case(tmp_path / "in", "site_b", 23, sequences=("t1c",))
    qc = run(case, tmp_path / "out", params())
    assert qc["sequences"] == ["t1c"] and qc["brain_mask"]["source"] == "deepbet(t1c)"
    assert_brain_matches_the_truth(case, qc, tmp_path / "out", least=0.93)


def test_cropping_keeps_the_whole_brain_with_the_margin(site_c: tuple[Case, dict[str, Any], Path]) -> None:
    _, qc, out = site_c
    brain = sitk.GetArrayFromImage(read(out, "brain_mask.nii.gz"))
    margin = math.ceil(10.0 / 2.5)
    index, size, full = qc["crop"]["index"], qc["crop"]["size"], qc["crop"]["uncropped_size"]
    for axis in range(3):  # SimpleITK axis x, y, z = numpy axis 2, 1, 0
        occupied = np.nonzero(np.any(brain, axis=tuple(a for a in range(3) if a != 2 - axis)))[0]
        low_gap, high_gap = occupied.min(), size[axis] - 1 - occupied.max()
        assert low_gap == margin or index[axis] == 0  # exactly the margin unless the grid ended first
        assert high_gap == margin or index[axis] + size[axis] == full[axis]
    assert np.count_nonzero(brain) * 2.5**3 / 1000 == pytest.approx(qc["brain_volume_ml"])


def test_sequences_are_z_scored_inside_the_brain_and_zero_outside(site_c: tuple[Case, dict[str, Any], Path]) -> None:
    _, qc, out = site_c
    brain = sitk.GetArrayFromImage(read(out, "brain_mask.nii.gz")) > 0
    lesions = sitk.GetArrayFromImage(read(out, qc["files"]["mask"])) > 0
    normal = brain & ~lesions  # the statistics are the normal-appearing brain's; lesions keep their contrast
    for s, name in qc["files"]["sequences"].items():
        values = sitk.GetArrayFromImage(read(out, name))
        assert np.all(values[~brain] == 0), s
        assert values[normal].mean() == pytest.approx(0.0, abs=1e-3), s
        assert values[normal].std() == pytest.approx(1.0, abs=1e-3), s
        assert qc["normalisation"][s]["std"] > 0
    t1c = sitk.GetArrayFromImage(read(out, qc["files"]["sequences"]["t1c"]))
    enhancing = sitk.GetArrayFromImage(read(out, qc["files"]["mask"])) == 3
    assert t1c[enhancing].mean() > 1.0  # the enhancing tumour stands out of the normal brain on T1c


def test_a_skull_stripped_bias_corrected_co_registered_site_skips_those_steps(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_a", 3, SMALL_GRID)
    qc = run(case, tmp_path / "out", fast())
    assert qc["brain_mask"]["source"] == "nonzero_support"
    for s in ("t1n", "t2w", "t2f"):
        assert qc["registration"][s]["status"] == "skipped"
        assert "metric_after" not in qc["registration"][s] and "rotation_deg" not in qc["registration"][s]
    for s in ph.SEQUENCES:
        assert qc["bias"][s]["status"] == "skipped" and "field_p95_p5" not in qc["bias"][s]
    assert set(qc["timings_s"]) >= {"read", "reorient", "brain_mask", "resample", "write"}
    assert not any(k.startswith("register_") for k in qc["timings_s"])
    brain = sitk.GetArrayFromImage(read(tmp_path / "out", "brain_mask.nii.gz"))
    truth = ph.brain_mask(case.head, grid_of(read(tmp_path / "out", "brain_mask.nii.gz")))
    assert dice(brain, truth) > 0.9


def test_a_given_brain_mask_is_used(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_b", 4, SMALL_GRID, sequences=("t1c", "t2f"))
    t1c = sitk.ReadImage(str(case.patient.images["t1c"]))
    given = to_image(ph.brain_mask(case.head, grid_of(t1c)).astype(np.uint8), grid_of(t1c))
    patient = dataclasses.replace(case.patient, brain_mask=write_image(given, tmp_path / "in" / "brain.nii.gz"))
    (tmp_path / "out").mkdir()
    qc = preprocess_patient(patient, case.site, fast(), tmp_path / "out")
    assert qc["brain_mask"]["source"] == "given"
    brain = read(tmp_path / "out", "brain_mask.nii.gz")
    assert dice(sitk.GetArrayViewFromImage(brain), ph.brain_mask(case.head, grid_of(brain))) > 0.95


def test_two_runs_give_identical_arrays(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_c", 6, SMALL_GRID, sequences=("t1c", "t2w"))
    p = fast(target_spacing_mm=(4.0, 4.0, 4.0), n4={"shrink_factor": 1, "iterations": [20, 20]})
    first, second = run(case, tmp_path / "a", p), run(case, tmp_path / "b", p)
    assert {k: v for k, v in first.items() if k != "timings_s"} == {k: v for k, v in second.items() if k != "timings_s"}
    for name in [*first["files"]["sequences"].values(), "seg.nii.gz", "seg_native.nii.gz", "brain_mask.nii.gz"]:
        a, b = read(tmp_path / "a", name), read(tmp_path / "b", name)
        assert ops.same_grid(a, b, tolerance=0.0)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


# --------------------------------------------------------------------------------------------------
# QC failures
# --------------------------------------------------------------------------------------------------


def test_qc_brain_volume_for_a_brain_mask_that_is_far_too_small(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_b", 7, SMALL_GRID, sequences=("t1c", "t2w"))
    t1c = sitk.ReadImage(str(case.patient.images["t1c"]))
    cube = np.zeros(sitk.GetArrayViewFromImage(t1c).shape, dtype=np.uint8)
    cube[8:11, 20:26, 20:26] = 1  # 108 voxels of 4.5 x 4.5 x 15 mm: about 33 ml
    brain = write_image(to_image(cube, grid_of(t1c)), tmp_path / "in" / "brain.nii.gz")
    patient = dataclasses.replace(case.patient, brain_mask=brain)
    (tmp_path / "out").mkdir()
    with pytest.raises(PatientDataError, match=r"site_b-7: the brain mask \(given\) is \d+ ml, outside the "
                                               r"allowed 700-2200 ml") as info:
        preprocess_patient(patient, case.site, fast(), tmp_path / "out")
    assert info.value.reason == "qc_brain_volume"
    assert not any((tmp_path / "out").iterdir())  # nothing written for a failed patient


def test_qc_brain_mask_tumour_for_a_brain_mask_that_misses_the_tumour(tmp_path: Path) -> None:
    """A given mask that leaves the tumour out is a failed mask: quarantined with its reason, not patched by
    unioning the tumour in."""
    case = write_case(tmp_path / "in", "site_b", 4, SMALL_GRID, sequences=("t1c", "t2f"))
    t1c = sitk.ReadImage(str(case.patient.images["t1c"]))
    brain = ph.brain_mask(case.head, grid_of(t1c))
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(case.patient.mask))) > 0
    given = to_image((brain & ~tumour).astype(np.uint8), grid_of(t1c))
    patient = dataclasses.replace(case.patient, brain_mask=write_image(given, tmp_path / "in" / "brain.nii.gz"))
    (tmp_path / "out").mkdir()
    with pytest.raises(PatientDataError, match=r"site_b-4: the brain mask \(given\) holds only \d% of the tumour, "
                                               r"less than 90% \(preprocess.qc.min_tumour_in_brain\)") as info:
        preprocess_patient(patient, case.site, fast(), tmp_path / "out")
    assert info.value.reason == "qc_brain_mask_tumour"
    lenient = fast(qc={"min_tumour_in_brain": 0.0})
    assert preprocess_patient(patient, case.site, lenient, tmp_path / "out")["brain_mask"]["tumour_inside"] < 0.1


def test_qc_registration_for_a_sequence_that_does_not_show_the_patient(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_c", 8, SMALL_GRID, sequences=("t1c", "t2w"))
    t2w = sitk.ReadImage(str(case.patient.images["t2w"]))
    noise = np.random.default_rng(0).integers(1, 1000, sitk.GetArrayViewFromImage(t2w).shape).astype(np.int16)
    write_image(to_image(noise, grid_of(t2w)), case.patient.images["t2w"])
    (tmp_path / "out").mkdir()
    with pytest.raises(PatientDataError, match=r"site_c-8: registering t2w to t1c ended with Mattes mutual "
                                               r"information -?0\.0\d+ .* above the threshold -0\.05") as info:
        preprocess_patient(case.patient, case.site, fast(), tmp_path / "out")
    assert info.value.reason == "qc_registration"


def test_a_tumour_smaller_than_one_target_voxel_is_kept_as_one_voxel(tmp_path: Path) -> None:
    # Once quarantined (qc_resampling): the volumes are measured on the native label map now.
    case = write_case(tmp_path / "in", "site_a", 9, SMALL_GRID, sequences=("t1c", "t2w"))
    seg = sitk.ReadImage(str(case.patient.mask))
    tiny = np.zeros(sitk.GetArrayViewFromImage(seg).shape, dtype=np.uint8)
    tiny[15, 24, 24] = 3  # one 5 mm voxel of enhancing tumour, resampled to 12 mm voxels
    write_image(to_image(tiny, grid_of(seg)), case.patient.mask)
    qc = run(case, tmp_path / "out", fast(target_spacing_mm=(12.0, 12.0, 12.0)))
    assert qc["region_volumes_mm3"]["native"]["wt"] == 125.0
    assert qc["region_volumes_mm3"]["resampled"]["wt"] == 12.0 ** 3  # one target voxel, found or restored
    assert qc["resampling"]["allowance_mm3"] >= 12.0 ** 3 - 125.0
    native = sitk.GetArrayFromImage(read(tmp_path / "out", qc["files"]["mask_native"]))
    assert np.count_nonzero(native) == 1 and native.max() == 3


def test_qc_resampling_for_a_label_map_off_its_images(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_a", 12, SMALL_GRID, sequences=("t1c", "t2w"))
    seg = sitk.ReadImage(str(case.patient.mask))
    seg.SetOrigin([v - 400.0 for v in seg.GetOrigin()])  # drawn on another series: outside the reference
    write_image(seg, case.patient.mask)
    (tmp_path / "out").mkdir()
    with pytest.raises(PatientDataError, match=r"site_a-12: the whole tumour \(\d+ mm3, 2 lesion\(s\)\) vanished "
                                               r"when the label map was resampled to 5x5x5 mm") as info:
        preprocess_patient(case.patient, case.site, fast(), tmp_path / "out")
    assert info.value.reason == "qc_resampling"


def test_preprocess_failed_for_an_itk_error_names_the_stage_and_the_itk_message(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_c", 10, SMALL_GRID, sequences=("t1c", "t2w"))
    t2w = sitk.ReadImage(str(case.patient.images["t2w"]))
    t2w.SetOrigin([v + 1000.0 for v in t2w.GetOrigin()])  # a series from somewhere else entirely
    write_image(t2w, case.patient.images["t2w"])
    (tmp_path / "out").mkdir()
    with pytest.raises(PatientDataError, match=r"site_c-10: preprocessing failed in stage 'register_t2w': "
                                               r"ITK ERROR: MattesMutualInformation.*All samples map outside") as info:
        preprocess_patient(case.patient, case.site, fast(), tmp_path / "out")
    assert info.value.reason == "preprocess_failed"
    assert "0x" not in info.value.message


def test_an_unreadable_input_is_preprocess_failed_and_bad_calls_are_value_errors(tmp_path: Path) -> None:
    case = write_case(tmp_path / "in", "site_a", 11, SMALL_GRID, sequences=("t1c", "t2w"))
    case.patient.images["t2w"].write_bytes(b"not an image")
    (tmp_path / "out").mkdir()
    with pytest.raises(PatientDataError, match=r"site_a-11: preprocessing could not read an input image") as info:
        preprocess_patient(case.patient, case.site, params(), tmp_path / "out")
    assert info.value.reason == "preprocess_failed"
    with pytest.raises(ValueError, match="reference 't2f' is not among the images"):
        preprocess_patient(case.patient, dataclasses.replace(case.site, reference="t2f"), params(), tmp_path / "out")
