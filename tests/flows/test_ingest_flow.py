"""The ingestion flow under a Prefect test harness: quarantine reasons, caching, re-runs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from uuid import UUID

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

from flows.ingest import ingest
from survival_model.config import Params
from tasks.privacy import pseudonymiser as resolve_pseudonymiser
from tests.conftest import PipelineRun, params_for

pytestmark = pytest.mark.usefixtures("prefect_harness")


def expected_quarantine(data_dir: Path, params: Params) -> dict[str, str]:
    """case id -> reason, from the generator's ground truth."""
    pseudonymiser = resolve_pseudonymiser(params.privacy)
    table = pd.read_csv(data_dir / "ground_truth" / "expected_quarantine.csv", dtype=str)
    return {pseudonymiser.case_id(r.site, r.patient_key): r.reason for r in table.itertuples()}


def task_states(flow_run_id: UUID, timeout: float = 60.0, at_least: int = 0) -> dict[str, str]:
    """task-run name -> final state name, for every task run of a flow run.

    Prefect 3 records task-run states from events, asynchronously: right after a flow returns, the
    API may still show some task runs as Running, or not yet show the last ones at all (seen on a busy
    2-core machine: 25 of 26), so wait until every state is final and at least ``at_least`` runs are there.
    """
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states = {run.name: run.state for run in runs if run.state is not None}
        settled = len(states) >= at_least and all(state.is_final() for state in states.values())
        if settled or time.monotonic() > deadline:
            return {name: state.name for name, state in states.items()}
        time.sleep(0.5)


def run_ingest(params: Params, tasks: int = 0) -> tuple[object, dict[str, str]]:
    """The ingestion flow's result and its task runs' final states (``tasks``: how many to wait for)."""
    state = ingest(params, return_state=True)
    cohort = state.result()
    return cohort, task_states(state.state_details.flow_run_id, at_least=tasks)


def test_every_bad_patient_is_quarantined_for_its_reason_and_the_rest_is_intact(
    tiny_cohort_master: Path, tmp_path: Path
) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work", cold=True)  # the suite's cold ingestion
    cohort_result, _ = run_ingest(params)
    cohort = cohort_result.cohort()
    quarantine = cohort_result.quarantine()
    expected = expected_quarantine(tiny_cohort_master, params)

    assert len(expected) == 13
    found = {(r.case_id, r.reason) for r in quarantine.itertuples()}
    for case_id, reason in expected.items():
        assert (case_id, reason) in found, f"{reason} not reported for {case_id}"
    assert set(quarantine["case_id"]) == set(expected), "a good patient was quarantined"

    truth = pd.read_csv(tiny_cohort_master / "ground_truth" / "patients.csv", dtype={"patient_key": str})
    good = truth[truth["bad_reason"].isna()]
    pseudonymiser = resolve_pseudonymiser(params.privacy)
    good_ids = {pseudonymiser.case_id(r.site, r.patient_key) for r in good.itertuples()}
    assert set(cohort["case_id"]) == good_ids
    assert cohort_result.summary["patients"] == 10

    # clinical values survive three formats (days / months / dates) within rounding
    merged = cohort.merge(good.assign(case_id=[pseudonymiser.case_id(r.site, r.patient_key)
                                               for r in good.itertuples()]), on="case_id")
    assert len(merged) == 10
    assert (merged["event_x"].astype(int) == merged["event_y"]).all()
    assert np.allclose(merged["time_days_x"].astype(float), merged["time_days_y"], atol=0.6)
    known_kps = merged["kps"].notna()
    assert known_kps.sum() >= 8
    assert (merged.loc[known_kps, "kps"].astype(float) == merged.loc[known_kps, "clin_kps"]).all()
    assert (merged["sex"].astype(str) == merged["clin_sex"]).all()
    assert (merged["primary"].astype(str) == merged["clin_primary"]).all()
    assert (merged["n_brain_mets"].astype(int) == merged["clin_n_brain_mets"]).all()
    site_c = merged[merged["site_x"] == "site_c"]
    assert np.allclose(site_c["age"].astype(float), site_c["clin_age"], atol=0.1)

    # identifying columns never reach the cohort
    for column in ("patient_name", "mrn", "date_of_birth", "Name", "MRN", "DOB", "surname", "birth_date"):
        assert column not in cohort.columns
    text = cohort.to_csv() + quarantine.to_csv()
    assert "SYN-MET-" not in text and "P000" not in text


def test_second_run_is_cached_and_a_changed_image_reruns_that_patient_only(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    params = params_for(tiny_cohort, tmp_path / "work")
    every = 3 + 22 + 3 + 1  # per site: discovery and clinical table; 22 cases; the cohort
    first, states1 = run_ingest(params, tasks=every)
    assert any(s == "Completed" for n, s in states1.items() if n.startswith("images-"))

    # nothing changed: the whole stage is reused, no per-case task is even submitted
    second, states2 = run_ingest(params)
    assert {n for n in states2 if not n.startswith("discover")} == set(), states2
    assert second.cohort_path == first.cohort_path and second.summary == first.summary

    # without stage reuse, every per-case task is a cache hit
    per_task = params_for(tiny_cohort, tmp_path / "work", **{"orchestration.reuse_unchanged_stages": False})
    third, states3 = run_ingest(per_task, tasks=every)
    computing = {n: s for n, s in states3.items() if not n.startswith("discover")}
    assert len(computing) == len([n for n in states1 if not n.startswith("discover")]) == 22 + 3 + 1
    assert all(s == "Cached" for s in computing.values()), computing
    assert third.cohort_path == first.cohort_path

    # change the bytes of one patient's image
    case_dir = tiny_cohort / "site_a" / "images" / "SYN-MET-00002-000"
    path = case_dir / "SYN-MET-00002-000-t1c.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    array[array.shape[0] // 2, 10, 10] += 5.0
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, str(path), True)

    # one changed case makes a new stage key: the per-case tasks run, and only that case recomputes
    _, states4 = run_ingest(params)
    changed_id = resolve_pseudonymiser(params.privacy).case_id("site_a", "SYN-MET-00002-000")
    images = {n: s for n, s in states4.items() if n.startswith("images-")}
    assert images[f"images-{changed_id}"] == "Completed"
    assert all(s == "Cached" for n, s in images.items() if n != f"images-{changed_id}")
    assert all(s == "Cached" for n, s in states4.items() if n.startswith("clinical-"))
    assert [s for n, s in states4.items() if n.startswith("assemble-cohort")] == ["Completed"]


def test_a_cache_hit_whose_outputs_are_missing_is_recomputed(tiny_cohort_master: Path, tmp_path: Path) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work")
    first, _ = run_ingest(params)
    victim = Path(first.cohort()["path_t1c"].iloc[0]).parent
    shutil.rmtree(victim)

    second, states = run_ingest(params)
    rerun = [n for n, s in states.items() if n.startswith("images-") and s == "Completed"]
    assert len(rerun) == 1
    assert victim.is_dir() and (victim / "manifest.json").is_file()
    assert second.cohort_path == first.cohort_path

    _, states3 = run_ingest(params)  # whole again: the stage is reused
    assert {n for n in states3 if not n.startswith("discover")} == set(), states3


def test_a_changed_clinical_mapping_reruns_only_that_sites_clinical_task(
    tiny_cohort_master: Path, tmp_path: Path
) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work")
    run_ingest(params)
    changed = params_for(tiny_cohort_master, tmp_path / "work",
                         **{"institutions.site_b.clinical.values": {"primary": {"thyroid": "other", "ovary": "gi"}}})
    _, states = run_ingest(changed)
    assert states["clinical-site_b"] == "Completed"
    assert states["clinical-site_a"] == "Cached" and states["clinical-site_c"] == "Cached"
    assert all(s == "Cached" for n, s in states.items() if n.startswith("images-"))


def test_pipeline_runs_ingestion_as_a_subflow_tracked_in_mlflow_and_the_prefect_ui(
    pipeline_run: PipelineRun,
) -> None:
    """One MLflow run per pipeline run (counts, quarantine, fingerprint, dataset, ingestion and feature
    artifacts) and Prefect artifacts (summaries, per-site table, quarantine and QC tables) for the UI; on the
    session's one pipeline run (``tests.conftest.pipeline_run``)."""
    from mlflow import MlflowClient

    params, result = pipeline_run.params, pipeline_run.result
    assert result.summary["patients"] == 10
    flow_run_id = UUID(MlflowClient(tracking_uri=params.mlflow_uri).get_run(result.mlflow_run_id)
                       .data.tags["prefect.flow_run_id"])
    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(flow_run_id)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    assert parent.state is not None and parent.state.is_completed()
    assert sorted(c.name for c in children) == ["evaluation", "imaging", "ingest", "registry", "training",
                                                "training-tabular-cox"]
    assert all(c.state is not None and c.state.is_completed() for c in children)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=params.mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["cohort.patients"] == 10
    assert run.data.metrics["cohort.site_b.patients"] == 3
    assert run.data.metrics["quarantine.reason.unknown_label"] == 1
    assert run.data.metrics["quarantine.patients"] == 13
    assert run.data.tags["data_fingerprint"] == result.summary["fingerprint"]
    assert run.data.tags["prefect.flow_run_id"] == str(flow_run_id)
    assert run.data.params["ingest.grid_tolerance_mm"] == "0.05"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == result.summary["fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "ingestion")}
    assert artifacts == {"ingestion/summary.json", "ingestion/summary.md", "ingestion/quarantine.csv",
                         "ingestion/cohort_summary.png"}
    assert "site_a-" not in str(run.data.params) and "SYN-MET" not in str(run.data.params)
    assert run.data.metrics["features.patients"] == result.features_summary["patients"] == 10
    assert run.data.metrics["features.columns.rad"] > 0 and run.data.metrics["features.columns.vol"] > 0
    assert run.data.metrics["qc.patients_preprocessed"] == 10
    assert run.data.tags["pyradiomics_version"] == result.features_summary["pyradiomics_version"]
    feature_artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "features")}
    assert feature_artifacts == {"features/schema.json", "features/qc_summary.json", "features/qc_table.csv",
                                 "features/quarantine.csv"}
    # training: the ensemble's test C-index beside the oracle, one nested run per fold with its curves
    test_c = result.training_metrics["test"]["cindex"]["value"]  # NaN when the test patients are not comparable
    assert run.data.metrics["test.patients"] == result.training_metrics["test"]["patients"] >= 2
    assert run.data.metrics.get("test.cindex", float("nan")) == test_c or test_c != test_c
    assert run.data.tags["model.backbone"] == "test_efficientnet"
    training_artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "training")}
    assert {"training/metrics.json", "training/predictions.parquet", "training/learning_curves.png",
            "training/splits.json"} <= training_artifacts
    nested = client.search_runs([run.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    assert sorted(r.data.tags["fold"] for r in nested) == ["fold-1", "fold-2"]
    for child in nested:
        curve = client.get_metric_history(child.info.run_id, "train_loss")
        assert [m.step for m in curve] == [0, 1, 2]  # epoch 0: the model before the image phase
        assert {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")} >= {
            "checkpoint/model.safetensors", "checkpoint/config.json"}

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect_client:
        published = prefect_client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    by_key = {a.key: a for a in published}
    assert {"ingestion-summary", "cohort-by-site", "quarantine", "preprocessing-qc", "features-summary",
            "training-summary", "training-folds", "model-comparison", "model-comparison-summary",
            "evaluation-report", "promotion-decision", "model-versions"} <= set(by_key)
    assert run.data.tags["registry.version"] == "1" and run.data.tags["registry.gate"] in (
        "promoted", "refused", "undefined")  # 10 patients: often too few test patients to decide
    assert "Promotion gate" in str(by_key["promotion-decision"].data)
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id, "model")} >= {"model/MLmodel"}
    assert "gpa" in str(by_key["model-comparison"].data) and "oracle" in str(by_key["model-comparison"].data)
    evaluation_artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "evaluation")}
    assert {"evaluation/comparison", "evaluation/explanation", "evaluation/report"} <= evaluation_artifacts
    report_files = {a.path for a in client.list_artifacts(result.mlflow_run_id, "evaluation/report")}
    assert {"evaluation/report/report.html", "evaluation/report/summary.md"} <= report_files
    assert "tabular-cox" in str(by_key["model-comparison"].data)  # the ablation from evaluation.networks
    assert "Leakage audit" in (result.evaluation / "report" / "report.html").read_text(encoding="utf-8")
    assert "oracle" in str(by_key["training-summary"].data)
    assert "mlflow" in str(by_key["ingestion-summary"].data).lower()
    assert "unknown_label" in str(by_key["quarantine"].data)
    assert "brain_volume_ml" in str(by_key["preprocessing-qc"].data)


def test_a_process_pool_gives_the_same_cohort_as_threads(tiny_cohort_master: Path, tmp_path: Path) -> None:
    from flows.runners import task_runner_for

    threads = params_for(tiny_cohort_master, tmp_path / "threads")
    processes = params_for(tiny_cohort_master, tmp_path / "processes", cold=True, **{  # computed in processes
        "orchestration.task_runner": "processes", "orchestration.max_workers": 2})
    by_threads = ingest.with_options(task_runner=task_runner_for(threads))(threads)
    by_processes = ingest.with_options(task_runner=task_runner_for(processes))(processes)
    assert by_processes.fingerprint == by_threads.fingerprint
    assert by_processes.quarantine().drop(columns="message").equals(by_threads.quarantine().drop(columns="message"))
