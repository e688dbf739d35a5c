"""Experiment tracking with MLflow, through an explicit client and run ids.

The explicit ``MlflowClient`` (not the fluent ``mlflow.start_run`` API, whose active run is per
thread) lets several pipeline tasks, possibly in different threads or processes, log into one run.
Metrics and params go in batches (one ``log_batch`` call, not one call per value). The default store
is an embedded SQLite file under the work directory with artifacts beside it; a server URI in
``params.yaml`` switches to a tracking server.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from survival_model import owners
from survival_model.config import Params
from survival_model.errors import TrackingError

log = logging.getLogger(__name__)

_MAX_PARAM_CHARS = 6000
_BATCH = 100
#: The tag naming the process that made a run (``survival_model.owners.Owner.tag``).
OWNER_TAG = "survival_model.owner"
#: The tag holding a run's idempotency key (:meth:`Tracker.start_run`).
KEY_TAG = "survival_model.run_key"
#: The tag naming the process that marked an orphaned run ``KILLED``.
ENDED_BY_TAG = "survival_model.ended_by"


_KEY = re.compile(r"[A-Za-z0-9._:/-]+")


def _checked_key(key: str) -> str:
    """A run key safe to put between quotes in an MLflow search filter."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"a run key holds only letters, digits and . _ : / -, not {key!r}")
    return key


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """For an embedded SQLite store, hold an exclusive lock on ``<database>.lock`` while MLflow opens it: MLflow's
    tracking store creates its tables and migrates them on first use without a lock (its own
    ``_safe_initialize_tables`` guards only its other stores), so two runs started together on a fresh work
    directory raced (``table latest_metrics already exists``). The kernel's ``flock`` ends with the holding
    process, so a killed run leaves no lock behind. Other stores (a server, a database server) need none."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed (or when this process dies)
        yield


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

        self.tracking_uri = tracking_uri
        self.ui_url = ui_url.rstrip("/") if ui_url else None
        try:
            with _store_lock(tracking_uri):
                self.client = MlflowClient(tracking_uri=tracking_uri)  # may open (and so create) the store
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
                  parent_run_id: str | None = None, key: str | None = None) -> str:
        """A new run tagged with its owner (this process: :mod:`survival_model.owners`), or, given a ``key``, the
        run already made with that key (a retried call after an outage whose first try did create the run, a
        retried task) so that retries never duplicate runs."""
        if key is not None and (found := self.find_run(key)) is not None:
            run_id, status = found
            self.client.set_tag(run_id, OWNER_TAG, owners.current().tag())
            if status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        all_tags = {**(tags or {}), OWNER_TAG: owners.current().tag()}
        if key is not None:
            all_tags[KEY_TAG] = _checked_key(key)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        return str(run.info.run_id)

    def find_run(self, key: str) -> tuple[str, str] | None:
        """The (run id, status) of this experiment's live run made with ``key`` (:meth:`start_run`), if any."""
        from mlflow.entities import ViewType  # mlflow: loaded with the client, not with this module

        where = f"tags.`{KEY_TAG}` = '{_checked_key(key)}'"
        found = self.client.search_runs([self.experiment_id], filter_string=where, run_view_type=ViewType.ACTIVE_ONLY,
                                        max_results=1, order_by=["attributes.start_time ASC"])
        return (str(found[0].info.run_id), str(found[0].info.status)) if found else None

    def end_orphaned_runs(self) -> list[str]:
        """Mark ``KILLED`` this experiment's runs still ``RUNNING`` whose owner was a process on this host that is
        gone (a run killed with ``kill -9``); a live run, another host's run and a run without an owner tag
        (made before owners were recorded) are left alone. Returns the runs marked."""
        from mlflow.entities import ViewType  # mlflow: loaded with the client, not with this module

        running = self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                          run_view_type=ViewType.ACTIVE_ONLY, max_results=10_000)
        ended = []
        me = owners.current().tag()
        for run in running:
            owner = owners.Owner.parse(run.data.tags.get(OWNER_TAG, ""))
            if owner is None or owner.alive() is not False:
                continue
            run_id = str(run.info.run_id)
            self.client.set_tag(run_id, ENDED_BY_TAG, me)
            self.client.set_terminated(run_id, status="KILLED")
            log.warning("MLflow run %s was left RUNNING by process %d on this host, which is gone: marked KILLED",
                        run_id, owner.pid)
            ended.append(run_id)
        return ended

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
