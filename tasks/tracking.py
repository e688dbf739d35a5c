"""Tracking tasks: one MLflow run per pipeline run, and the ingestion summary in MLflow and Prefect."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from survival_model.config import Params
from survival_model.evaluation.stage import EvaluationResult
from survival_model.features.stage import FeatureTable
from survival_model.imageio import read_json, write_json
from survival_model.ingest import report
from survival_model.ingest.cohort import CohortResult
from survival_model.tracking import Tracker
from survival_model.tracking_summary import (
    comparison_metrics,
    cv_metrics,
    features_markdown,
    fold_metrics,
    imaging_metrics,
    ingestion_metrics,
    run_params,
    training_markdown,
    training_metrics,
)
from survival_model.training.folds import FoldResult
from survival_model.training.stage import TrainingResult


def table_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame as rows for a Prefect table artifact (JSON: missing values as null)."""
    return [{str(k): (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in frame.to_dict("records")]


@task(name="start-mlflow-run", retries=2, retry_delay_seconds=[2, 10])
def start_run(params: Params, run_name: str, tags: dict[str, str], key: str | None = None) -> str:
    """The pipeline's MLflow run (the one made with ``key`` already, when a retry follows a try that made it), after
    marking ``KILLED`` the runs that killed runs on this host left ``RUNNING`` (``Tracker.end_orphaned_runs``)."""
    tracker = Tracker.from_params(params)
    tracker.end_orphaned_runs()
    run_id = tracker.start_run(run_name, tags=tags, key=key)
    tracker.log_params(run_id, run_params(params))
    return run_id


@task(name="end-mlflow-run", retries=2, retry_delay_seconds=[2, 10])
def end_run(params: Params, run_id: str, status: str) -> None:
    Tracker.from_params(params).end_run(run_id, status)


@task(name="log-ingestion", retries=2, retry_delay_seconds=[2, 10])
def log_ingestion(params: Params, run_id: str, cohort: CohortResult) -> str:
    """Counts, quarantine by reason, fingerprint, dataset input and artifacts on the MLflow run."""
    tracker = Tracker.from_params(params)
    frame = cohort.cohort()
    tracker.log_metrics(run_id, ingestion_metrics(cohort.summary))
    tracker.set_tags(run_id, {"data_fingerprint": cohort.fingerprint})
    tracker.log_dataset(run_id, frame, name="canonical-cohort", digest=cohort.fingerprint,
                        source=cohort.cohort_path.as_uri(), context="ingestion")
    tracker.log_artifacts(run_id, cohort.report_files(), artifact_path="ingestion")
    return tracker.run_url(run_id)


@task(name="publish-ingestion-artifacts")
def publish_ingestion(cohort: CohortResult, run_link: str) -> None:
    """The same summary in the Prefect UI: Markdown digest, per-site table, quarantine table, link."""
    summary: dict[str, Any] = cohort.summary
    create_markdown_artifact(report.summary_markdown(summary, run_link), key="ingestion-summary",
                             description="Canonical cohort and quarantine at a glance")
    create_table_artifact(report.site_table(summary), key="cohort-by-site",
                          description="Patients, events and quarantine per site")
    create_table_artifact(report.quarantine_table(cohort.quarantine()) or [{"reason": "none"}],
                          key="quarantine", description="Patients kept out of the cohort, with reasons")
    if run_link.startswith("http"):
        create_link_artifact(run_link, link_text="MLflow run", key="mlflow-run")


@task(name="log-imaging", retries=2, retry_delay_seconds=[2, 10])
def log_imaging(params: Params, run_id: str, table: FeatureTable) -> None:
    """QC summary, feature-table schema and counts, pyradiomics version on the MLflow run."""
    tracker = Tracker.from_params(params)
    tracker.log_metrics(run_id, imaging_metrics(table.summary))
    tracker.set_tags(run_id, {"pyradiomics_version": table.summary["pyradiomics_version"]})
    tracker.log_artifacts(run_id, table.report_files(), artifact_path="features")


@task(name="publish-imaging-artifacts")
def publish_imaging(table: FeatureTable) -> None:
    """The preprocessing QC table and a feature summary in the Prefect UI."""
    qc = pd.read_csv(table.folder / "qc_table.csv")
    values = qc.round(4).astype(object).where(qc.notna(), None)
    rows = [{str(k): v for k, v in r.items()} for r in values.to_dict("records")]
    create_table_artifact(rows or [{"status": "no patient"}], key="preprocessing-qc",
                          description="Per-patient preprocessing QC (quarantined patients show their reason)")
    create_markdown_artifact(features_markdown(table.summary, table.table_path), key="features-summary",
                             description="The feature table at a glance")


@task(name="log-training", retries=2, retry_delay_seconds=[2, 10])
def log_training(params: Params, run_id: str, result: TrainingResult, run_name: str) -> list[str]:
    """A nested MLflow run per fold (per-epoch curves, final metrics, checkpoint: uploaded with the run
    that trained it, referenced by later runs reusing it) under the pipeline run, and the ensemble's test
    metrics, predictions, splits and learning curves on the pipeline run."""
    tracker = Tracker.from_params(params)
    fold_runs = []
    for fold in result.folds:
        key = f"{run_id}/{fold.name}"  # a retry of this task finds the folds it logged, never duplicates them
        logged = tracker.find_run(key)
        if logged is not None and logged[1] == "FINISHED":
            fold_runs.append(logged[0])
            continue
        child = tracker.start_run(f"{run_name}-{fold.name}", tags={"fold": fold.name, "fold_key": fold.key},
                                  parent_run_id=run_id, key=key)
        tracker.log_params(child, {"fold": fold.name, "fold_key": fold.key,
                                   "patients_fit": fold.summary["patients_fit"],
                                   "patients_stop": fold.summary["patients_stop"],
                                   "patients_validation": fold.summary["patients_validation"]})
        history = fold.history()
        for row in history.to_dict("records"):
            tracker.log_metrics(child, {"train_loss": row["train_loss"], "stop_loss": row["stop_loss"],
                                        "stop_cindex": row["stop_cindex"], "learning_rate": row["learning_rate"],
                                        "epoch_seconds": row["seconds"]}, step=int(row["epoch"]))
        tracker.log_metrics(child, fold_metrics(fold.summary))
        _log_checkpoint(tracker, child, fold)
        tracker.end_run(child)
        fold_runs.append(child)
    tracker.log_metrics(run_id, training_metrics(result.metrics))
    tracker.set_tags(run_id, {f"model.{k}": result.metrics[k] for k in ("variant", "objective", "backbone")})
    tracker.log_artifacts(run_id, result.files(), artifact_path="training")
    return fold_runs


def _log_checkpoint(tracker: Tracker, run_id: str, fold: FoldResult) -> None:
    """Upload a fold's checkpoint once per tracking store; a later run of the same (reused) fold points to
    the run that holds it (tag ``checkpoint_run_id``) instead of copying the weights again (a resnet50
    fold is ~100 MB)."""
    record_path = fold.folder / "mlflow_checkpoints.json"
    record: dict[str, str] = read_json(record_path) if record_path.is_file() else {}
    holder = record.get(tracker.tracking_uri)
    if holder and holder != run_id and tracker.run_exists(holder):
        tracker.set_tags(run_id, {"checkpoint_run_id": holder, "checkpoint_reused": "true"})
        return
    tracker.log_artifacts(run_id, fold.files(), artifact_path="checkpoint")
    tracker.set_tags(run_id, {"checkpoint_run_id": run_id, "checkpoint_reused": "false"})
    write_json({**record, tracker.tracking_uri: run_id}, record_path)


@task(name="publish-training-artifacts")
def publish_training(result: TrainingResult, run_link: str) -> None:
    """The training summary (test C-index beside the oracle, folds) and the test predictions in the Prefect UI."""
    create_markdown_artifact(training_markdown(result.metrics, run_link), key="training-summary",
                             description="Fold ensemble on the locked test set, beside the oracle")
    folds = [{"fold": f.name, **{k: f.summary[k] for k in ("validation_cindex", "stop_cindex", "best_epoch", "epochs",
                                                             "seconds", "patients_fit", "patients_stop",
                                                             "patients_validation")}}
             for f in result.folds]
    create_table_artifact(folds, key="training-folds", description="Validation C-index and epochs per fold")


@task(name="log-evaluation", retries=2, retry_delay_seconds=[2, 10])
def log_evaluation(params: Params, run_id: str, result: EvaluationResult) -> None:
    """Every model's scores on the test set (``compare.<model>.<score>``), the CV means, and the whole
    evaluation folder (comparison, explanation, the HTML report) under ``evaluation/``."""
    tracker = Tracker.from_params(params)
    tracker.log_metrics(run_id, {**comparison_metrics(result.comparison), **cv_metrics(result.cv)})
    tracker.log_folder(run_id, result.folder, artifact_path="evaluation")


@task(name="publish-evaluation-artifacts")
def publish_evaluation(result: EvaluationResult, run_link: str) -> None:
    """The evaluation in the Prefect UI: the Markdown summary, the full comparison table, the report's link."""
    create_markdown_artifact(result.summary_markdown + f"\nMLflow run (the HTML report is its artifact "
                             f"`evaluation/report/report.html`): {run_link}\n", key="model-comparison-summary",
                             description="The networks beside the clinical baselines and the oracle, explained")
    create_table_artifact(table_rows(result.comparison.reset_index().round(4)), key="model-comparison",
                          description="Every score with its 95% interval")
    create_link_artifact(result.report_html.resolve().as_uri(), link_text="evaluation report (HTML, local file)",
                         key="evaluation-report")


StageResult = CohortResult | FeatureTable | TrainingResult | EvaluationResult


def record(params: Params, run_id: str, result: StageResult, run_link: str, run_name: str = "") -> str:
    """A stage's result logged on the pipeline's MLflow run and published as Prefect artifacts: each stage's
    logging and publishing pair, stated once. Returns the MLflow run's link (the ingestion's logging makes it)."""
    if isinstance(result, CohortResult):
        run_link = log_ingestion(params, run_id, result)
        publish_ingestion(result, run_link)
    elif isinstance(result, FeatureTable):
        log_imaging(params, run_id, result)
        publish_imaging(result)
    elif isinstance(result, TrainingResult):
        log_training(params, run_id, result, run_name)
        publish_training(result, run_link)
    else:
        log_evaluation(params, run_id, result)
        publish_evaluation(result, run_link)
    return run_link
