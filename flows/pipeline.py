"""The end-to-end pipeline flow (also the scheduled retraining): ingestion -> imaging (preprocessing,
features) -> training -> evaluation (the network beside clinical baselines and the oracle, explained,
reported) -> registry (the main network packaged, registered as ``challenger``, gated against the
``champion``), in one MLflow run (the folds as nested runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.evaluation import evaluation
from flows.imaging import imaging
from flows.ingest import ingest
from flows.registry import RegistryResult, registry
from flows.runners import task_runner_for
from flows.training import training, variant_params
from survival_model.config import Params, load_params
from survival_model.fingerprint import code_version
from tasks import registry as registry_tasks
from tasks import tracking


@dataclass(frozen=True)
class PipelineResult:
    """Where a pipeline run's results are."""

    work_dir: Path
    cohort: Path
    quarantine: Path
    summary: dict[str, Any]
    features: Path
    features_summary: dict[str, Any]
    all_quarantine: Path
    mlflow_run_id: str
    mlflow_link: str
    training: Path
    training_metrics: dict[str, Any]
    evaluation: Path
    comparison_markdown: str
    registry: RegistryResult | None


@flow(name="brain-mets-pipeline")
def pipeline(params_path: str, overrides: dict[str, Any] | None = None) -> PipelineResult:
    """Run every stage that exists, in one MLflow run."""
    params: Params = load_params(params_path, overrides)
    logger = get_run_logger()
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
        "code_version": code_version("survival_model"),
        "params_file": str(Path(params_path).resolve()),
    }
    run_id = tracking.start_run(params, f"pipeline-{flow_run.get_name()}", tags)
    try:
        cohort = ingest.with_options(task_runner=task_runner_for(params))(params)
        link = tracking.log_ingestion(params, run_id, cohort)
        tracking.publish_ingestion(cohort, link)
        table = imaging.with_options(task_runner=task_runner_for(params))(params, cohort)
        tracking.log_imaging(params, run_id, table)
        tracking.publish_imaging(table)
        trained = training.with_options(task_runner=task_runner_for(params))(params, cohort, table)
        tracking.log_training(params, run_id, trained, f"pipeline-{flow_run.get_name()}")
        tracking.publish_training(trained, link)
        others = []
        for variant in params.evaluation.networks:  # further networks on the same splits, for the comparison
            other = variant_params(params, variant)
            net = other.training.network
            fusion = f"-{net.fusion}" if net.fusion != "additive" and net.variant == "hybrid" else ""
            label = f"{net.variant}-{net.objective}{fusion}-{net.backbone}" if net.variant != "tabular" else \
                f"tabular-{net.objective}"
            others.append(training.with_options(task_runner=task_runner_for(other),
                                                flow_run_name=f"training-{label}")(other, cohort, table))
        compared = evaluation.with_options(task_runner=task_runner_for(params))(params, cohort, table,
                                                                               [trained, *others])
        tracking.log_evaluation(params, run_id, compared)
        tracking.publish_evaluation(compared, link)
        registered = None
        if params.registry.enabled:
            registered = registry.with_options(task_runner=task_runner_for(params))(
                params, cohort, table, trained, compared, run_id, link)
            registry_tasks.publish_promotion(params, run_id, registered)
    except BaseException:
        tracking.end_run(params, run_id, "FAILED")
        raise
    tracking.end_run(params, run_id, "FINISHED")
    logger.info("MLflow run: %s", link)
    return PipelineResult(params.work_dir, cohort.cohort_path, cohort.quarantine_path, cohort.summary,
                          table.table_path, table.summary, table.quarantine_path, run_id, link, trained.folder,
                          trained.metrics, compared.folder, compared.summary_markdown, registered)
