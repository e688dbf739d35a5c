"""Preprocessing and features on the real pieces in ../shared/realdata (skipped where absent)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from survival_model.config import (
    REALISTIC_OVERLAY,
    Acquisition,
    BrainMaskParams,
    FeaturesParams,
    IngestParams,
    Institution,
    PreprocessParams,
)
from survival_model.features.table import feature_row
from survival_model.features.volumetric import volumetric_features
from survival_model.ingest.discovery import discover_cases
from survival_model.ingest.images import IngestImages, case_id_for
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.patient import Patient
from survival_model.preprocess import extractor, ops
from survival_model.preprocess.patient import SiteImaging
from survival_model.preprocess.stage import Preprocess
from survival_model.stage import run
from tests.conftest import realdata_dir
from tests.preprocess.images import dice

pytestmark = pytest.mark.realdata
PSEUDONYMISER = Pseudonymiser(b"r" * 32)


def realistic_preprocess() -> PreprocessParams:
    """The preprocessing of the BraTS-size overlay (``--realistic``): 1 mm, N4 and registration chosen there."""
    return PreprocessParams.model_validate(yaml.safe_load(REALISTIC_OVERLAY.read_text(encoding="utf-8"))["preprocess"])


@pytest.fixture(scope="module")
def real() -> Path:
    found = realdata_dir()
    if found is None:
        pytest.skip("../shared/realdata is not on this machine")
    return found


@pytest.fixture(scope="module")
def extractor_weights() -> str:
    """The trained extractor's version and model hashes; the tests that need it skip where it is not installed."""
    try:
        return extractor.deepbet_fingerprint()
    except extractor.BrainExtractionError:
        pytest.skip("deepbet (the trained brain extractor and its weights) is not installed")


def brats2013(real: Path) -> Institution:
    return Institution.model_validate({
        "images": {"layout": "pattern", "root": str(real / "brats2013_expert"),
                   "sequences": {"t1c": "{case}/T1c_subtrMeanDivStd.nii.gz",
                                 "t2f": "{case}/Flair_subtrMeanDivStd.nii.gz"},
                   "mask": "{case}/OTMultiClass.nii.gz", "brain_mask": "{case}/brainmask.nii.gz"},
        "labels": "brats2013",
        "acquisition": {"skull_stripped": True, "bias_corrected": True, "co_registered": True},
        "clinical": {"path": "/unused.csv", "id_column": "id",
                     "survival": {"kind": "duration", "time_column": "t", "event_column": "e"}},
    })


@pytest.fixture(scope="module")
def brats2013_ingested(real: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    work = tmp_path_factory.mktemp("brats2013")
    inst = brats2013(real)
    cases = discover_cases("brats2013", inst.images)
    assert len(cases) == 6
    outcomes = [run(IngestImages(case_id_for(c, inst, PSEUDONYMISER), c, inst, IngestParams(), work)) for c in cases]
    assert all(o.ok for o in outcomes)
    return [(c, o) for c, o in zip(cases, outcomes, strict=True)]


def source_counts(case: Any) -> dict[int, int]:
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask))).astype(int)
    return {v: int((source == v).sum()) for v in (1, 2, 3, 4)}


def test_brats2013_whole_tumour_is_the_sum_of_its_declared_parts(brats2013_ingested: list[Any]) -> None:
    """Five-value expert labels (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing) at 1 mm: the
    canonical volumes add up and equal the source's own voxel counts."""
    for case, outcome in brats2013_ingested:
        features = volumetric_features(outcome.patient.mask, FeaturesParams())
        counts = source_counts(case)
        assert features["vol_et_mm3"] == pytest.approx(counts[4])
        assert features["vol_netc_mm3"] == pytest.approx(counts[1] + counts[3])
        assert features["vol_snfh_mm3"] == pytest.approx(counts[2])
        assert features["vol_wt_mm3"] == pytest.approx(
            features["vol_et_mm3"] + features["vol_netc_mm3"] + features["vol_snfh_mm3"])
        assert features["vol_wt_mm3"] == pytest.approx(sum(counts.values()))
        assert features["vol_tc_mm3"] == pytest.approx(features["vol_et_mm3"] + features["vol_netc_mm3"])
        assert features["vol_lesion_count"] >= 1
        assert 0 < features["vol_largest_lesion_mm3"] <= features["vol_tc_mm3"]


def test_brats2013_with_negative_zscored_intensities_through_preprocessing_and_features(
    brats2013_ingested: list[Any], tmp_path: Path
) -> None:
    """Skull-stripped, already normalised inputs with negative background, a given brain mask, only two
    sequences: preprocessing keeps the tumour volume at 1 mm and features are finite."""
    params = realistic_preprocess()  # 1 mm, the BraTS-size overlay's settings
    inst = brats2013(realdata_dir() or Path())
    case, outcome = brats2013_ingested[0]
    assert outcome.patient is not None
    result = run(Preprocess(outcome.patient, SiteImaging("t1c", inst.acquisition), params, tmp_path))
    assert result.patient is not None, result.quarantine
    qc = result.patient.qc
    assert qc["brain_mask"]["source"].startswith("given")
    assert qc["tumour_volume_change"] < 0.01
    row = feature_row(outcome.case_id, "brats2013", result.patient.images, result.patient.mask, FeaturesParams())
    assert row["vol_wt_mm3"] == pytest.approx(sum(source_counts(case).values()), rel=0.01)
    assert np.isfinite(row["int_wt_t1c_mean"]) and np.isfinite(row["int_wt_t2f_mean"])
    assert np.isnan(row["int_wt_t1n_mean"])  # a sequence the site does not have
    assert np.isfinite(row["rad_wt_t1c_firstorder_mean"])


# --------------------------------------------------------------------------------------------------
# TCGA-FG-6692: the raw series (5.5 mm slices, a field of view per sequence, not co-registered, skull,
# bias) through preprocessing, compared with the same patient's registered, skull-stripped version
# --------------------------------------------------------------------------------------------------

TCGA_SEQUENCE = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "fla": "t2f"}
OLD_BRATS_TO_CANONICAL = {1: 1, 2: 2, 4: 3}  # fused segmentation 1 NETC, 2 edema, 4 ET -> 1 NETC, 2 SNFH, 3 ET
TCGA_ACQUISITION = Acquisition(skull_stripped=False, bias_corrected=False, co_registered=False)


@dataclass(frozen=True)
class Tcga:
    registered: Path
    raw_t1c: Path
    placeholder: Patient
    fused: Patient
    to_registered: sitk.Transform  # a point of our preprocessed space -> the registered version's point
    fused_on_raw: Path  # the fused segmentation on the raw T1c's grid (canonical labels)


def align_registered_t1c(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """Affine alignment of the registered (atlas-space, skull-stripped) T1c onto our preprocessed T1c.

    Test-side only: the registered version was resampled to the SRI24 atlas (its own scale, its own
    header), so its relation to the scanner space of the raw series is affine, not rigid. Started from
    the brain masks' centres of mass (our image is z-scored, so intensity moments mean nothing). One ITK
    thread: a registration takes its thread count when it is created, and ITK's threaded metric sums in
    arrival order, so with more threads the result changes from run to run.
    """
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        initial = sitk.CenteredTransformInitializer(
            sitk.Cast(fixed != 0, sitk.sitkFloat32), sitk.Cast(moving != 0, sitk.sitkFloat32),
            sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS)
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.1, 1)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(1.0, 0.001, 200, relaxationFactor=0.5)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2, 1])
        method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(initial, inPlace=False)
        grid = ops.target_grid(fixed, (2.0, 2.0, 2.0), "LPS")
        transform: sitk.Transform = method.Execute(
            sitk.Resample(fixed, grid, sitk.Transform(), sitk.sitkLinear), moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return transform


@pytest.fixture(scope="module")
def tcga(real: Path, extractor_weights: str, tmp_path_factory: pytest.TempPathFactory) -> Tcga:
    raw, registered = real / "tcga_fg_6692" / "raw", real / "tcga_fg_6692" / "registered"
    if not (raw.is_dir() and registered.is_dir()):
        pytest.skip("TCGA-FG-6692 is not in ../shared/realdata")
    files = {TCGA_SEQUENCE[p.name.removesuffix(".nii.gz").rsplit("_", 1)[1]]: p for p in sorted(raw.glob("*.nii.gz"))}
    work = tmp_path_factory.mktemp("tcga")
    params = realistic_preprocess()  # 1 mm, N4 at 8 mm: the BraTS-size overlay's settings
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(params.itk_threads)  # as the preprocessing task does
    try:
        return _tcga(files, registered, params, work)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _tcga(files: dict[str, Path], registered: Path, params: PreprocessParams, work: Path) -> Tcga:
    """Preprocess the raw series twice: with a placeholder lesion, then with the fused segmentation."""

    def preprocess(mask: Path, key: str) -> Patient:
        patient = Patient(site="tcga", case_id="tcga-1", folder=mask.parent, images=files, mask=mask,
                          brain_mask=None, key=key)
        outcome = run(Preprocess(patient, SiteImaging("t1c", TCGA_ACQUISITION), params, work))
        assert outcome.patient is not None, outcome.quarantine
        return outcome.patient

    # 1. Preprocess with a placeholder lesion (the real segmentation is in atlas space, not on these grids).
    t1c = sitk.ReadImage(str(files["t1c"]))
    box = np.zeros(sitk.GetArrayViewFromImage(t1c).shape, np.uint8)
    box[12:15, 100:110, 120:130] = 3
    placeholder = preprocess(write_like(box, t1c, work / "placeholder.nii.gz"), "placeholder")
    # 2. Align the registered version to our preprocessed T1c; 3. carry the fused segmentation onto the raw
    # T1c grid (our preprocessed space is the raw T1c's physical space) and preprocess again with it.
    ours = sitk.ReadImage(str(placeholder.images["t1c"]), sitk.sitkFloat32)
    theirs = sitk.ReadImage(str(registered / "OtherEXampleFromTCIA_t1c_bet.nii.gz"), sitk.sitkFloat32)
    transform = align_registered_t1c(ours, theirs)
    fused = sitk.ReadImage(str(registered / "segmentation_fused_mav.nii.gz"))
    on_raw = sitk.GetArrayFromImage(sitk.Resample(fused, t1c, transform, sitk.sitkNearestNeighbor))
    canonical = np.zeros_like(on_raw, dtype=np.uint8)
    for old, new in OLD_BRATS_TO_CANONICAL.items():
        canonical[on_raw == old] = new
    fused_on_raw = write_like(canonical, t1c, work / "fused_on_raw.nii.gz")
    with_fused = preprocess(fused_on_raw, "fused")
    return Tcga(registered, files["t1c"], placeholder, with_fused, transform, fused_on_raw)


def write_like(array: np.ndarray, reference: sitk.Image, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path))
    return path


def in_our_space(tcga: Tcga, name: str, like: Path) -> np.ndarray:
    """A file of the registered version resampled (nearest) onto one of our preprocessed grids."""
    image = sitk.ReadImage(str(tcga.registered / name))
    grid = sitk.ReadImage(str(like))
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, tcga.to_registered, sitk.sitkNearestNeighbor))


def test_tcga_raw_sequences_are_registered_and_bias_corrected(tcga: Tcga) -> None:
    """Thick slices and a field of view per sequence: each sequence registered to T1c (metric improved),
    N4 lowers every sequence's low-frequency non-uniformity, the brain has a plausible volume."""
    qc = tcga.fused.qc
    assert qc["registration"]["t1c"] == {"status": "reference"}
    for s in ("t1n", "t2w", "t2f"):
        record = qc["registration"][s]
        assert record["status"] == "registered", s
        assert record["metric_after"] < record["metric_before"] < 0, s
    for s in ("t1n", "t1c", "t2w", "t2f"):
        record = qc["bias"][s]
        assert record["status"] == "corrected", s
        assert record["nonuniformity_after"] < record["nonuniformity_before"], s
    # Measured inside the brain mask: 0.0130 of 0.0234 (0.55) inside the trained extractor's tighter mask; below
    # 0.5 inside the morphological strip's, whose rim reached further into the periphery where the field is strongest.
    assert qc["bias"]["t1c"]["nonuniformity_after"] < 0.6 * qc["bias"]["t1c"]["nonuniformity_before"]
    assert qc["brain_mask"]["source"] == "deepbet(t1n)"  # the trained extractor, on the registered T1
    assert qc["grid"]["spacing"] == [1.0, 1.0, 1.0]


def test_tcga_brain_extraction_agrees_with_the_registered_brain_mask(tcga: Tcga) -> None:
    """The trained extractor on the raw T1 (registered to T1c) against the registered version's brain (its
    non-zero support) carried into our space: Dice and volume (measured: Dice 0.914, 1605 vs 1819 ml; the
    morphological strip of T1c + T2w: 0.905. 72 % of the disagreement lies within 3 mm of the reference's
    surface: the two draw the boundary differently, benchmarks/brain_extraction.py)."""
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tcga.fused.brain_mask))) > 0
    theirs = in_our_space(tcga, "OtherEXampleFromTCIA_t1c_bet.nii.gz", tcga.fused.brain_mask) != 0
    assert dice(ours, theirs) > 0.88
    assert tcga.fused.qc["brain_volume_ml"] == pytest.approx(np.count_nonzero(theirs) / 1000, rel=0.2)
    assert tcga.fused.qc["brain_mask"]["tumour_inside"] > 0.95


def test_tcga_declared_with_t1c_alone_gets_an_anatomical_brain(tcga: Tcga, tmp_path: Path) -> None:
    """The user's case: one contrast T1 per patient, skull on, thick slices. The morphological strip returned the
    whole head here (2204 ml: qc_brain_volume); the trained extractor finds the brain."""
    patient = Patient(site="tcga", case_id="tcga-1", folder=tmp_path, images={"t1c": tcga.raw_t1c},
                      mask=tcga.fused_on_raw, brain_mask=None, key="t1c-only")
    params = realistic_preprocess()
    outcome = run(Preprocess(patient, SiteImaging("t1c", TCGA_ACQUISITION), params, tmp_path))
    assert outcome.patient is not None, outcome.quarantine
    qc = outcome.patient.qc
    assert qc["sequences"] == ["t1c"] and qc["brain_mask"]["source"] == "deepbet(t1c)"
    assert 1300 < qc["brain_volume_ml"] < 2000
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(outcome.patient.brain_mask))) > 0
    theirs = in_our_space(tcga, "OtherEXampleFromTCIA_t1c_bet.nii.gz", outcome.patient.brain_mask) != 0
    assert dice(ours, theirs) > 0.88  # measured 0.911
    assert qc["brain_mask"]["tumour_inside"] > 0.95
    # ... and into features: the tumour measured on the native label map, intensities from T1c only
    p = outcome.patient
    row = feature_row(p.case_id, p.site, p.images, p.mask, FeaturesParams(), native_seg=p.native_mask)
    assert row["vol_wt_mm3"] == pytest.approx(qc["region_volumes_mm3"]["native"]["wt"])
    assert np.isfinite(row["int_wt_t1c_mean"]) and np.isnan(row["int_wt_t2f_mean"])


@pytest.mark.parametrize("sequence", ["t1c", "t1n", "t2w", "t2f"])
def test_met_00110_each_sequence_alone_gives_the_brain(real: Path, extractor_weights: str, sequence: str) -> None:
    """The real metastasis case is skull-stripped: each sequence's non-zero support is its brain. The trained
    extractor from that sequence alone (measured Dice 0.96-0.98) and the QC volume."""
    path = real / "brats_met_00110" / f"BraTS-MET-00110-000-{sequence}.nii.gz"
    if not path.is_file():
        pytest.skip("BraTS-MET-00110 is not in ../shared/realdata")
    image = ops.reorient(sitk.ReadImage(str(path), sitk.sitkFloat32), "LPS")
    mask = ops.resample_mask(extractor.extract_brain(image, BrainMaskParams(), "LPS"), image)
    support = sitk.GetArrayFromImage(image) != 0
    assert dice(sitk.GetArrayViewFromImage(mask) > 0, support) > 0.94
    assert 1200 < ops.binary_volume_ml(mask) < 1800


def test_brats2013_trained_extraction_agrees_with_the_given_brain_masks(real: Path, extractor_weights: str) -> None:
    """Six real glioma cases, z-scored (negative background): the extractor on T1c alone against each case's own
    brain mask (measured Dice 0.85-0.97, median 0.94; benchmarks/RESULTS.md "Brain extraction")."""
    scores = []
    for case in sorted((real / "brats2013_expert").iterdir()):
        image = ops.reorient(sitk.ReadImage(str(case / "T1c_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32), "LPS")
        given = sitk.GetArrayFromImage(ops.reorient(sitk.ReadImage(str(case / "brainmask.nii.gz")), "LPS")) > 0
        scores.append(dice(sitk.GetArrayFromImage(extractor.deepbet_mask(image)) > 0, given))
    assert len(scores) == 6 and min(scores) > 0.8 and np.median(scores) > 0.92, scores


def test_tcga_tumour_volume_survives_the_thick_slices(tcga: Tcga) -> None:
    """The fused segmentation taken through the raw 5.5 mm T1c grid and our preprocessing, against the same
    segmentation resampled straight into our grid: volumes and overlap per region (measured: WT 33842 vs
    33443 mm3, Dice WT 0.92, ET 0.86)."""
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tcga.fused.mask)))
    direct = in_our_space(tcga, "segmentation_fused_mav.nii.gz", tcga.fused.mask)
    qc = tcga.fused.qc
    assert qc["tumour_volume_change"] < 0.05
    assert qc["region_volumes_mm3"]["resampled"]["wt"] == np.count_nonzero(mask)
    for region, ours, theirs, min_dice in (("wt", mask > 0, direct > 0, 0.85), ("et", mask == 3, direct == 4, 0.75),
                                            ("tc", np.isin(mask, (1, 3)), np.isin(direct, (1, 4)), 0.8)):
        assert np.count_nonzero(ours) == pytest.approx(np.count_nonzero(theirs), rel=0.05), region
        assert dice(ours, theirs) > min_dice, region
    # The alignment's own scale is consistent: the atlas-space volume divided by the affine's determinant.
    fused = sitk.GetArrayViewFromImage(sitk.ReadImage(str(tcga.registered / "segmentation_fused_mav.nii.gz")))
    affine = sitk.AffineTransform(sitk.CompositeTransform(tcga.to_registered).GetNthTransform(0))
    scale = abs(np.linalg.det(np.array(affine.GetMatrix()).reshape(3, 3)))
    assert np.count_nonzero(fused) / scale == pytest.approx(np.count_nonzero(direct), rel=0.05)
    # Enhancing tumour is where T1c is bright: above the edema in our z-scored T1c. A thin rim seen through
    # 5.5 mm slices is sensitive to a millimetre of alignment (this fixture aligns the published segmentation
    # to our preprocessed T1c, whose intensities any normalisation change moves): means measured 0.26-0.71 vs
    # 0.10-0.14 over alignments perturbed by ITK's thread count, and 0.17 vs 0.18 after the normalisation
    # began taking its statistics from the normal-appearing brain, where the brightest rim voxels fell into the
    # edema label (medians 0.18 vs 0.06, 0.43 vs 0.11 before). So the medians are compared, with a margin.
    t1c = sitk.GetArrayFromImage(sitk.ReadImage(str(tcga.fused.images["t1c"])))
    assert np.median(t1c[mask == 3]) > np.median(t1c[mask == 2]) + 0.05
