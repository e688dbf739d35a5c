"""Experiment tracking with MLflow, through an explicit client and run ids.

The explicit ``MlflowClient`` (not the fluent ``mlflow.start_run`` API, whose active run is per
thread) lets several pipeline tasks, possibly in different threads or processes, log into one run.
Metrics and params go in batches (one ``log_batch`` call, not one call per value). The default store
is an embedded SQLite file under the work directory with artifacts beside it; a server URI in
``params.yaml`` switches to a tracking server.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from survival_model.config import Params
from survival_model.errors import TrackingError

log = logging.getLogger(__name__)

_MAX_PARAM_CHARS = 6000
_BATCH = 100


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


class Tracker:
    """One MLflow experiment, addressed by tracking URI; every call names its run id."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None,
                 ui_url: str | None = None) -> None:
        """``artifact_root``: a local folder for a new experiment's artifacts (local stores only; with a
        tracking server pass ``None`` and the server's artifact configuration decides)."""
        from mlflow import MlflowClient  # mlflow: only when tracking is used (the CLI imports this module)

        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.ui_url = ui_url.rstrip("/") if ui_url else None
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = artifact_root.resolve().as_uri() if artifact_root is not None else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = found.experiment_id
        except Exception as exc:  # MLflow raises many types (MlflowException, SQLAlchemy, requests)
            raise TrackingError(f"MLflow at {tracking_uri} is not usable: {exc}") from exc

    @classmethod
    def from_params(cls, params: Params) -> Tracker:
        return cls(params.mlflow_uri, params.tracking.experiment, params.mlflow_local_artifact_root,
                   params.tracking.ui_url)

    def start_run(self, run_name: str, tags: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None) -> str:
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        return str(run.info.run_id)

    def run_exists(self, run_id: str) -> bool:
        """Whether ``run_id`` is a live (not deleted) run of this store."""
        try:
            return str(self.client.get_run(run_id).info.lifecycle_stage) == "active"
        except Exception:  # noqa: BLE001 - MLflow raises its own and SQLAlchemy errors for unknown ids
            return False

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param  # mlflow: loaded with the client, not with this module

        flat = flatten(params)
        items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric  # mlflow: loaded with the client, not with this module

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items()) if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag  # mlflow: loaded with the client, not with this module

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_folder(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        """Every file under ``folder``, keeping its sub-folders."""
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, dict(data), artifact_file)

    def log_dataset(self, run_id: str, frame: pd.DataFrame, *, name: str, digest: str, source: str,
                    context: str) -> None:
        """Record a dataset input (its schema, row count and our content digest) on the run."""
        from mlflow.data.pandas_dataset import from_pandas  # mlflow: loaded with the client, not with this module
        from mlflow.entities import DatasetInput, InputTag  # mlflow: loaded with the client, not with this module

        with warnings.catch_warnings():  # schema inference hints about integer columns: not actionable here
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=source, name=name, digest=digest)
            entity = DatasetInput(dataset=dataset._to_mlflow_entity(),
                                  tags=[InputTag(key="mlflow.data.context", value=context)])
        self.client.log_inputs(run_id, datasets=[entity])

    def run_url(self, run_id: str) -> str:
        """A link to the run in the MLflow UI if one is configured, else the run's URI."""
        if self.ui_url:
            return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return f"runs:/{run_id} (tracking URI {self.tracking_uri})"
