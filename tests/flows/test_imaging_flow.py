"""The imaging flow (preprocessing + features) under a Prefect test harness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from flows.imaging import imaging
from flows.ingest import ingest
from flows.runners import task_runner_for
from survival_model.config import Params
from tests.conftest import params_for
from tests.flows.test_ingest_flow import task_states

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run_pipeline(params: Params) -> tuple[object, dict[str, str], dict[str, str]]:
    cohort_state = ingest(params, return_state=True)
    cohort = cohort_state.result()
    state = imaging.with_options(task_runner=task_runner_for(params))(params, cohort, return_state=True)
    return (state.result(), task_states(cohort_state.state_details.flow_run_id),
            task_states(state.state_details.flow_run_id))


def test_the_flow_writes_preprocessed_images_qc_and_the_feature_table(
    tiny_cohort_master: Path, tmp_path: Path
) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work", cold=True)  # the suite's cold imaging run
    table_result, _, states = run_pipeline(params)
    table = table_result.table()
    assert len(table) == 10 and table["case_id"].is_unique
    for prefix in ("vol_", "int_", "rad_"):
        assert any(c.startswith(prefix) for c in table.columns), prefix
    assert {"age", "kps", "primary", "time_days", "event"} <= set(table.columns)
    assert not any(c.startswith("path_") for c in table.columns)
    assert (table["vol_wt_mm3"] > 0).all()
    # lesion counts come from the native label maps (a tiny-cohort patient may have edema only)
    assert (table["vol_lesion_count"] >= 1).sum() >= 8
    assert table_result.schema["vol_wt_mm3"].startswith("float")
    # every patient's preprocessed images are on one grid, in LPS
    folder = next((params.work_dir / "preprocess").glob("site_c/*/*"))
    grids = {name: sitk.ReadImage(str(next(folder.glob(f"{name}.nii*")))) for name in ("t1c", "t2f", "seg")}
    sizes = {image.GetSize() for image in grids.values()}
    assert len(sizes) == 1
    assert all(np.allclose(image.GetDirection(), np.eye(3).ravel()) for image in grids.values())
    assert all(np.allclose(image.GetSpacing(), (2.5, 2.5, 2.5)) for image in grids.values())
    # the ingestion quarantine is carried into the combined table
    quarantine = table_result.quarantine()
    assert {"images", "clinical", "cohort"} <= set(quarantine["stage"])
    assert quarantine["case_id"].nunique() == 13
    qc = pd.read_csv(table_result.folder / "qc_table.csv")
    assert len(qc) == 10 and (qc["status"] == "ok").all()
    assert sum(n.startswith("preprocess-") for n in states) == 10
    assert sum(n.startswith("features-") for n in states) == 10


def test_warm_run_is_cached_and_a_features_change_keeps_preprocessing(
    tiny_cohort_master: Path, tmp_path: Path
) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work")
    first, _, _ = run_pipeline(params)
    # nothing changed: both stages are reused whole, without a single per-patient task
    second, ingest_states, states = run_pipeline(params)
    assert {n for n in ingest_states if not n.startswith("discover")} == set(), ingest_states
    assert states == {}
    assert second.table_path == first.table_path
    pd.testing.assert_frame_equal(second.table(), first.table())

    # without stage reuse every per-patient task is a cache hit
    per_task = params_for(tiny_cohort_master, tmp_path / "work", **{"orchestration.reuse_unchanged_stages": False})
    again, ingest_states, states = run_pipeline(per_task)
    assert all(s == "Cached" for n, s in ingest_states.items() if not n.startswith("discover"))
    assert sum(n.startswith("preprocess-") for n in states) == 10
    assert states and all(s == "Cached" for s in states.values()), states
    assert again.table_path == first.table_path

    changed = params_for(tiny_cohort_master, tmp_path / "work", **{"features.min_lesion_mm3": 50.0})
    third, _, states = run_pipeline(changed)
    assert all(s == "Cached" for n, s in states.items() if n.startswith("preprocess-"))
    assert all(s == "Completed" for n, s in states.items() if n.startswith("features-"))
    assert third.table_path != first.table_path

    resampled = params_for(tiny_cohort_master, tmp_path / "work", **{"preprocess.crop_margin_mm": 5.0})
    _, ingest_states, states = run_pipeline(resampled)
    assert all(s == "Cached" for n, s in ingest_states.items() if not n.startswith("discover"))
    assert all(s == "Completed" for n, s in states.items() if n.startswith("preprocess-"))


def test_a_patient_failing_qc_is_quarantined_and_the_others_continue(tiny_cohort_master: Path, tmp_path: Path) -> None:
    # no registration can reach this similarity: the site that needs registration (site C) fails QC
    params = params_for(tiny_cohort_master, tmp_path / "work", **{"preprocess.qc.max_registration_metric": -5.0})
    table_result, _, _ = run_pipeline(params)
    table = table_result.table()
    quarantine = table_result.quarantine()
    failed = quarantine[quarantine["stage"] == "preprocess"]
    assert set(failed["reason"]) == {"qc_registration"}
    assert set(failed["site"]) == {"site_c"} and failed["case_id"].nunique() == 3
    assert set(table["site"]) == {"site_a", "site_b"} and len(table) == 7
    assert table_result.summary["quarantined_by_stage"]["preprocess"] == 3
