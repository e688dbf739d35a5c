"""The end-to-end pipeline flow (also the scheduled retraining): ingestion -> imaging (preprocessing,
features) -> training -> evaluation (the network beside clinical baselines and the oracle, explained,
reported) -> registry (the main network packaged, registered as ``challenger``, gated against the
``champion``), in one MLflow run (the folds as nested runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import Flow, flow, get_run_logger
from prefect.runtime import flow_run

from flows.evaluation import evaluation
from flows.imaging import imaging
from flows.ingest import ingest
from flows.registry import RegistryResult, registry
from flows.runners import task_runner_for
from flows.training import compared_networks, network_label, training
from survival_model.config import Params, load_params
from survival_model.fingerprint import code_version
from tasks import registry as registry_tasks
from tasks import tracking

R = TypeVar("R")


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


def on_runner(subflow: Flow[Any, R], params: Params, **options: Any) -> Flow[Any, R]:
    """The subflow on the task runner ``params`` choose (threads, processes or Dask): the choice stated once."""
    return subflow.with_options(task_runner=task_runner_for(params), **options)


@flow(name="brain-mets-pipeline")
def pipeline(params_path: str, overrides: dict[str, Any] | None = None) -> PipelineResult:
    """Run every stage, in one MLflow run; each stage's result is logged there and published to Prefect."""
    params: Params = load_params(params_path, overrides)
    logger = get_run_logger()
    name = f"pipeline-{flow_run.get_name()}"
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
        "code_version": code_version("survival_model"),
        "params_file": str(Path(params_path).resolve()),
    }
    # keyed by the flow run: a retried start finds the run its first try made (never two MLflow runs for one)
    key = f"pipeline/{flow_run.get_id()}" if flow_run.get_id() else None
    run_id = tracking.start_run(params, name, tags, key=key)
    try:
        cohort = on_runner(ingest, params)(params)
        link = tracking.record(params, run_id, cohort, "")
        table = on_runner(imaging, params)(params, cohort)
        tracking.record(params, run_id, table, link)
        trained = on_runner(training, params)(params, cohort, table)
        tracking.record(params, run_id, trained, link, name)
        others = [on_runner(training, other, flow_run_name=f"training-{network_label(other)}")(other, cohort, table)
                  for other in compared_networks(params)]  # further networks on the same splits
        compared = on_runner(evaluation, params)(params, cohort, table, [trained, *others])
        tracking.record(params, run_id, compared, link)
        registered = None
        if params.registry.enabled:
            registered = on_runner(registry, params)(params, cohort, table, trained, compared, run_id, link)
            registry_tasks.publish_promotion(params, run_id, registered)
    except BaseException:
        tracking.end_run(params, run_id, "FAILED")
        raise
    tracking.end_run(params, run_id, "FINISHED")
    logger.info("MLflow run: %s", link)
    return PipelineResult(params.work_dir, cohort.cohort_path, cohort.quarantine_path, cohort.summary,
                          table.table_path, table.summary, table.quarantine_path, run_id, link, trained.folder,
                          trained.metrics, compared.folder, compared.summary_markdown, registered)
