"""The MLflow model registry: one registered model, a version per package, the aliases ``challenger`` and
``champion``, and the record of every promotion.

- :func:`log_model`: the package as an MLflow pyfunc model (models from code: ``pyfunc_model.py`` is stored
  as code, the package as an artifact; a signature and an input example; explicit pip requirements, as
  inferring them took 10-15 s per model here) in a run's ``model/`` folder.
- :func:`register`: a new version from that folder, tagged with the package key, data fingerprint, params
  hash, code version and test metrics; a package already registered is found by its key instead
  (:func:`find_version`), so re-running unchanged data and params registers nothing new.
- :func:`set_champion` / :func:`rollback`: move the ``champion`` alias and append to the registered
  model's promotion history (a JSON tag), with who/why; :func:`versions` lists versions with their aliases,
  metrics and gate decisions.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from survival_model.errors import SurvivalModelError
from survival_model.registry.gate import Decision

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"
HISTORY_TAG = "champion.history"
#: MLflow limits a tag value (5000 characters in its SQL store): the history keeps the latest entries.
_HISTORY_CHARS = 4800
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


class RegistryError(SurvivalModelError):
    """The registry cannot do what was asked (unknown model or version, no previous champion, ...)."""


def _requirements() -> list[str]:
    """Pinned requirements of the packaged model (the versions installed here)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("survival-model", "mlflow", "torch", "timm", "scikit-learn", "scikit-survival", "skops",
                 "safetensors", "pandas", "numpy", "SimpleITK", "pyradiomics-bhklab"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def log_model(client: Any, run_id: str, package: Path, example: pd.DataFrame, output: pd.DataFrame) -> str:
    """Save the package as a pyfunc model into the run's ``model/`` folder; returns its artifact URI."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    def schema(frame: pd.DataFrame) -> Schema:
        return Schema([ColSpec("double" if pd.api.types.is_float_dtype(frame[c]) else
                               "long" if pd.api.types.is_integer_dtype(frame[c]) else "string", c)
                       for c in frame.columns])

    signature = ModelSignature(inputs=schema(example), outputs=schema(output))
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        target = Path(tmp) / "model"
        mlflow.pyfunc.save_model(str(target), python_model=str(PYFUNC_CODE), artifacts={"package": str(package)},
                                 signature=signature, input_example=example, pip_requirements=_requirements())
        client.log_artifacts(run_id, str(target), "model")
    return f"{client.get_run(run_id).info.artifact_uri}/model"


@dataclass(frozen=True)
class Version:
    """One registered version, as listed (tags flattened)."""

    version: int
    aliases: tuple[str, ...]
    run_id: str | None
    created: pd.Timestamp
    tags: dict[str, str]

    def metric(self, name: str) -> float | None:
        value = self.tags.get(name)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class Registry:
    """One registered model in an MLflow tracking/registry store."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(
                self.name, description="Survival of patients with brain metastases: fold ensemble of a hybrid "
                                       "CNN + tabular network (survival_model). Aliases: challenger, champion.")

    def find_version(self, package_key: str) -> Version | None:
        """The version registered from this package, if any."""
        for v in self.versions():
            if v.tags.get("package_key") == package_key:
                return v
        return None

    def register(self, source: str, run_id: str, tags: Mapping[str, Any], run_link: str | None = None) -> Version:
        """A new version from ``source`` (a logged pyfunc model), tagged, aliased ``challenger``."""
        self.ensure_model()
        created = self.client.create_model_version(self.name, source, run_id=run_id,
                                                   tags={k: str(v) for k, v in tags.items()}, run_link=run_link)
        self.client.set_registered_model_alias(self.name, CHALLENGER, created.version)
        return self.version(int(created.version))

    def version(self, number: int) -> Version:
        from mlflow.exceptions import MlflowException

        try:
            v = self.client.get_model_version(self.name, str(number))
        except MlflowException:
            raise RegistryError(f"model {self.name!r} has no version {number}") from None
        return Version(int(v.version), tuple(v.aliases or ()), v.run_id,
                       pd.Timestamp(v.creation_timestamp, unit="ms", tz="UTC"), dict(v.tags or {}))

    def versions(self) -> list[Version]:
        """Every version, newest first (empty when the model is not registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            aliases = dict(self.client.get_registered_model(self.name).aliases or {})
        except MlflowException:
            return []
        by_version: dict[int, list[str]] = {}
        for alias, number in aliases.items():  # the search below leaves aliases out (SQL store)
            by_version.setdefault(int(number), []).append(alias)
        found = self.client.search_model_versions(f"name = '{self.name}'")
        listed = [Version(int(v.version), tuple(sorted(by_version.get(int(v.version), []))), v.run_id,
                          pd.Timestamp(v.creation_timestamp, unit="ms", tz="UTC"), dict(v.tags or {}))
                  for v in found]
        return sorted(listed, key=lambda v: -v.version)

    def alias(self, alias: str) -> Version | None:
        from mlflow.exceptions import MlflowException

        try:
            v = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None
        return self.version(int(v.version))

    def tag_version(self, number: int, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(number), key, str(value))

    def history(self) -> list[dict[str, Any]]:
        """Every champion change, oldest first: ``version, previous, at, by, reason``."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(self.name).tags or {}
        except MlflowException:
            return []
        entries: list[dict[str, Any]] = json.loads(tags.get(HISTORY_TAG, "[]"))
        return entries

    def set_champion(self, number: int, *, reason: str, by: str) -> Version:
        """Give version ``number`` the ``champion`` alias and record why."""
        version = self.version(number)
        previous = self.alias(CHAMPION)
        self.client.set_registered_model_alias(self.name, CHAMPION, str(number))
        at = pd.Timestamp(time.time(), unit="s", tz="UTC").isoformat(timespec="seconds")
        entry = {"version": number, "previous": previous.version if previous else None, "at": at, "by": by,
                 "reason": reason}
        history = [*self.history(), entry]
        while len(json.dumps(history)) > _HISTORY_CHARS and len(history) > 1:
            history.pop(0)
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, json.dumps(history))
        self.tag_version(number, {"champion.since": at, "champion.reason": reason[:4000], "champion.by": by})
        log.info("%s version %d is champion (%s: %s)", self.name, number, by, reason)
        return self.version(version.version)

    def rollback(self, *, reason: str, by: str) -> Version:
        """Give ``champion`` back to the version that held it before the current one."""
        current = self.alias(CHAMPION)
        if current is None:
            raise RegistryError(f"model {self.name!r} has no champion to roll back from")
        for entry in reversed(self.history()):
            if entry["version"] == current.version and entry.get("previous") is not None:
                return self.set_champion(int(entry["previous"]), reason=f"rollback from {current.version}: {reason}",
                                         by=by)
        raise RegistryError(f"model {self.name!r}: no previous champion recorded before version {current.version}")

    def table(self) -> pd.DataFrame:
        """The versions as a table: aliases, created, test metrics and the gate's decision."""
        rows = []
        for v in self.versions():
            rows.append({"version": v.version, "aliases": ",".join(v.aliases), "created": v.created.strftime(
                "%Y-%m-%d %H:%M"), "model": v.tags.get("model", ""), "test_uno_c": v.metric("test.uno_c"),
                "test_harrell_c": v.metric("test.harrell_c"), "test_ibs": v.metric("test.integrated_brier"),
                "gate": v.tags.get("gate.decision", ""), "data": v.tags.get("data_fingerprint", "")[:12],
                "run_id": v.run_id or ""})
        return pd.DataFrame(rows)


def registration_markdown(name: str, version: Version, decision: Decision | None, run_link: str) -> str:
    """What happened to a run's model: the gate's decision, or that it was registered (and gated) before."""
    if decision is not None:
        text = decision.markdown(name, version.version)
    else:
        gate = version.tags.get("gate.decision", "not gated")
        champion = "is" if CHAMPION in version.aliases else "is not"
        text = (f"# {name}: nothing new to register\n\nData, parameters and code are unchanged: this run's model is "
                f"version {version.version}, registered before (gate: {gate}; it {champion} the champion). No new "
                f"version and no new gate decision.\n")
    return text + f"\nModel: `models:/{name}/{version.version}`; MLflow run: {run_link}\n"
