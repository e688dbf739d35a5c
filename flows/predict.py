"""The prediction flow: new patients (institutions declared in a params file like the training sources) ->
the same ingestion, preprocessing and feature tasks (cached) -> the registered model (``champion`` by default)
-> per-patient predictions, in one MLflow run with a Prefect table artifact."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.ingest import ingest
from flows.registry import model_rows
from flows.runners import task_runner_for
from survival_model.config import Params, load_params
from survival_model.errors import ConfigError
from survival_model.fingerprint import code_version
from survival_model.registry.predict import Predict
from tasks import registry as t
from tasks import tracking
from tasks.stage import StageTasks


@dataclass(frozen=True)
class PredictionResult:
    """Where a prediction run's results are."""

    folder: Path
    model: str
    version: int
    predicted: int
    not_predicted: int
    mlflow_link: str

    @property
    def predictions_path(self) -> Path:
        return self.folder / "predictions.csv"

    def export(self, out: Path) -> Path:
        """Copy the predictions (tables, Grad-CAM figures) into ``out``, created when missing; files of the same
        name there are replaced, others are left alone. The run's own folder (the content-keyed
        ``survival_model.registry.predict.Predict`` stage's) stays where the cache keeps it."""
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a folder")
        shutil.copytree(self.folder, out, dirs_exist_ok=True)
        return out


@flow(name="brain-mets-predict", flow_run_name="predict-{model}")
def predict(params_path: str, overrides: dict[str, Any] | None = None, model: str = "champion",
            gradcam: bool = False) -> PredictionResult:
    """Predict every patient the params file's institutions declare with ``models:/<name>@<model>`` (an alias)
    or ``models:/<name>/<model>`` (a version number)."""
    params: Params = load_params(params_path, overrides)
    logger = get_run_logger()
    version, package = t.fetch_model(params, model)
    name = params.registry.model_name
    tags = {"prefect.flow_run_id": str(flow_run.get_id()), "prefect.flow_run_name": str(flow_run.get_name()),
            "code_version": code_version("survival_model"), "params_file": str(Path(params_path).resolve()),
            "purpose": "prediction"}
    # keyed by the flow run: a retried start finds the run its first try made (never two MLflow runs for one)
    key = f"predict/{flow_run.get_id()}" if flow_run.get_id() else None
    run_id = tracking.start_run(params, f"predict-{flow_run.get_name()}", tags, key=key)
    try:
        cohort = ingest.with_options(task_runner=task_runner_for(params))(params)
        inputs = model_rows(params, cohort, None, package)
        stage = Predict(package, name, version.version, model, version.tags.get("package_key", ""), cohort.fingerprint,
                        inputs.table, inputs.image_paths, tuple(inputs.failed), inputs.seg_paths, gradcam,
                        params.work_dir)
        folder = StageTasks(params)(stage)
        info = stage.info()
        link, predicted, missing = t.log_predictions(params, run_id, folder, info)
    except BaseException:
        tracking.end_run(params, run_id, "FAILED")
        raise
    tracking.end_run(params, run_id, "FINISHED")
    logger.info("%s v%d: %d patient(s) predicted, %d not (%s)", name, version.version, predicted, missing, folder)
    return PredictionResult(folder, name, version.version, predicted, missing, link)
