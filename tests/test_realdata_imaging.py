"""Preprocessing and features on the real pieces in ../shared/realdata (skipped where absent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from survival_model.config import FeaturesParams, IngestParams, Institution, PreprocessParams
from survival_model.features.table import feature_row
from survival_model.features.volumetric import volumetric_features
from survival_model.ingest.discovery import discover_cases
from survival_model.ingest.images import ingest_case
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.preprocess.stage import PatientInput, run_preprocess
from tests.conftest import realdata_dir

pytestmark = pytest.mark.realdata
PSEUDONYMISER = Pseudonymiser(b"r" * 32)


@pytest.fixture(scope="module")
def real() -> Path:
    found = realdata_dir()
    if found is None:
        pytest.skip("../shared/realdata is not on this machine")
    return found


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
    outcomes = [ingest_case(c, inst, IngestParams(), PSEUDONYMISER, work) for c in cases]
    assert all(o.ok for o in outcomes)
    return [(c, o) for c, o in zip(cases, outcomes, strict=True)]


def source_counts(case: Any) -> dict[int, int]:
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask))).astype(int)
    return {v: int((source == v).sum()) for v in (1, 2, 3, 4)}


def test_brats2013_whole_tumour_is_the_sum_of_its_declared_parts(brats2013_ingested: list[Any]) -> None:
    """Five-value expert labels (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing) at 1 mm: the
    canonical volumes add up and equal the source's own voxel counts."""
    for case, outcome in brats2013_ingested:
        features = volumetric_features(outcome.images.mask, FeaturesParams())
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
    params = PreprocessParams()  # 1 mm, the library default
    inst = brats2013(realdata_dir() or Path())
    case, outcome = brats2013_ingested[0]
    images = outcome.images
    inp = PatientInput(site="brats2013", case_id=outcome.case_id, images=dict(images.sequences), mask=images.mask,
                       brain_mask=images.brain_mask, reference="t1c", acquisition=inst.acquisition)
    result = run_preprocess(inp, outcome.key, params, tmp_path)
    assert result.patient is not None, result.quarantine
    qc = result.patient.qc
    assert qc["brain_mask"]["source"].startswith("given")
    assert qc["tumour_volume_change"] < 0.01
    row = feature_row(outcome.case_id, "brats2013", result.patient.images, result.patient.mask, FeaturesParams())
    assert row["vol_wt_mm3"] == pytest.approx(sum(source_counts(case).values()), rel=0.01)
    assert np.isfinite(row["int_wt_t1c_mean"]) and np.isfinite(row["int_wt_t2f_mean"])
    assert np.isnan(row["int_wt_t1n_mean"])  # a sequence the site does not have
    assert np.isfinite(row["rad_wt_t1c_firstorder_mean"])
