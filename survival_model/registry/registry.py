"""The MLflow model registry: one registered model, a version per package, the aliases ``challenger`` and
``champion``, and the record of every promotion.

- :func:`log_model`: the package as an MLflow pyfunc model (models from code: ``pyfunc_model.py`` is stored
  as code, the package as an artifact; a signature and an input example) in a run's ``model/`` folder. The
  model is portable: it carries the library's source (``code/survival_model``, see :func:`model_code`), so it
  loads where this project is not installed, and its pip requirements (:func:`pip_requirements`) are the
  distributions its inference imports, pinned to the versions installed here, all on the public index.
- :func:`register`: a new version from that folder, tagged with the package's content identity
  (:func:`package_identity`), package key, data fingerprint, params hash, code version and test metrics; a
  package already registered is found by its identity instead (:meth:`Registry.find_version`), so re-running
  unchanged data and params registers nothing new, and neither does a code change that predicts identically.
- the package's identity is what it *is*: every fold's weights (tensor names, dtypes, shapes and bytes), every
  fold's fitted tabular pipeline and network config, and the settings of ``package.json``; not the code
  version or anything derived from it (``code_version``, ``training_key``, a fold's stage ``key``), nor what
  reports on the model rather than making it (``test_metrics``, a fold's training ``summary`` with its
  timings). A skops file is a zip archive whose member timestamps and member names (Python object ids) and
  whose schema (``__id__`` fields, again object ids) change with every dump of the same pipeline: its digest is
  of the schema with object ids resolved and left out, the library-version fields left out, and each array
  file replaced by the digest of its bytes (``.npy`` bytes are deterministic).
- :meth:`Registry.record_test_set_decision` counts a gate decision on a locked test set
  (``gate.fingerprint_test_set`` of the case ids it scored) in a JSON tag of the registered model;
  :meth:`Registry.test_set_decisions` (or :func:`decisions_on_test_set` from a client) reads the count.
- :func:`set_champion` / :func:`rollback`: move the ``champion`` alias and append to the registered
  model's promotion history (a JSON tag), with who/why; :func:`versions` lists versions with their aliases,
  metrics and gate decisions.
- :func:`registry_lock`: registering, gating and counting read and then write the registry (is this identity
  registered? who is champion? how many decisions on this test set?), so two registry flows at once could
  register one model twice, lose a count, or both promote against the same champion. The registry flow holds
  an exclusive file lock (``fcntl.flock``) under the work directory for all of it: runs on one machine that
  share a work directory (and so, by default, the embedded MLflow store in it) take turns. It cannot
  serialise runs on other machines, or with other work directories, against one remote MLflow server.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from survival_model.errors import SurvivalModelError
from survival_model.fingerprint import sha256_file, stable_hash
from survival_model.registry.gate import Decision
from survival_model.registry.package import PACKAGE_FILE, read_info

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"
#: ``gate.decision`` of a version that held ``champion`` (promoted by hand) before it was ever gated.
ALREADY_CHAMPION = "already champion"
HISTORY_TAG = "champion.history"
#: Registered-model tag: ``{test set fingerprint: gate decisions it served}``, most recently used last.
TEST_SETS_TAG = "gate.test_sets"
#: Version tag: the package's content identity (:func:`package_identity`).
IDENTITY_TAG = "package_identity"
#: MLflow limits a tag value (5000 characters in its SQL store): the history keeps the latest entries.
_HISTORY_CHARS = 4800
#: ``package.json`` fields that are not what the package is (see the module docstring).
_NOT_IDENTITY = frozenset({"code_version", "training_key", "test_metrics"})
_NOT_FOLD_IDENTITY = frozenset({"key", "summary"})
#: skops schema fields naming the writer's library versions, not the pipeline.
_SKOPS_WRITER = frozenset({"_sklearn_version", "_skops_version", "protocol"})
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
#: The library whose source travels with the model (``code_paths``). Only ``survival_model``: the pyfunc and
#: everything it imports are library code, which never imports ``tasks`` or ``flows`` (the import-linter
#: layers say so), so neither they nor Prefect are needed to predict. Chosen over logging a wheel of the project
#: with the model: a wheel's metadata would declare every dependency of the pipeline (Prefect, dask, ...) and
#: its name, ``survival-model``, belongs to an unrelated distribution on the public index.
LIBRARY = Path(__file__).resolve().parents[1]
#: What of the library is left out of the model: bytecode caches. The whole package travels (0.95 MB of
#: source), not only the modules a prediction imports: MLflow puts the model's code first on ``sys.path`` of the
#: process that loads it, so a partial copy would hide the rest of the library from that process.
CODE_LEFT_OUT = ("__pycache__", "*.pyc")
#: The distributions that loading and predicting with the model import (directly: their own dependencies
#: follow from their metadata): MLflow for the pyfunc, and the library's imports on the way from
#: ``pyfunc_model.py`` to ``PackagedModel.predict`` (configs, networks, skops pipelines and their
#: transformers, image inputs, survival curves). Training-only (torchsurv), report-only (matplotlib) and
#: ingestion-only (nibabel) imports are function-local and not needed. ``tests/registry/test_portable_model.py``
#: checks, in a fresh interpreter, that everything imported while predicting is in these distributions'
#: dependency closure.
INFERENCE_DISTRIBUTIONS = ("mlflow", "numpy", "pandas", "scipy", "pydantic", "PyYAML", "joblib", "scikit-learn",
                           "scikit-survival", "skops", "combatlearn", "safetensors", "torch", "torchvision", "timm",
                           "SimpleITK", "pyradiomics-bhklab", "psutil")


class RegistryError(SurvivalModelError):
    """The registry cannot do what was asked (unknown model or version, no previous champion, ...)."""


def pip_requirements() -> list[str]:
    """The packaged model's pip requirements: :data:`INFERENCE_DISTRIBUTIONS` pinned to the versions installed
    in this environment. A local version label (``2.4.0+cpu``, from PyTorch's own index) is dropped: it is not
    on the public index, and its public version is. This project itself is not a requirement: its code travels
    with the model (:func:`model_code`)."""
    out = []
    for name in INFERENCE_DISTRIBUTIONS:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise RegistryError(f"{name} is not installed: the model's requirements cannot be pinned (it is a "
                                "dependency of this project; reinstall the environment)") from None
        # PEP 440: a local label is everything after "+" (packaging's Version.public, without importing
        # packaging, which this project does not declare)
        out.append(f"{name}=={installed.split('+', 1)[0]}")
    return out


def model_code(target: Path) -> Path:
    """A copy of the library's source under ``target`` for the model's ``code_paths`` (without
    :data:`CODE_LEFT_OUT`); returns the copy's ``survival_model`` folder."""
    copy = Path(target) / LIBRARY.name
    shutil.copytree(LIBRARY, copy, ignore=shutil.ignore_patterns(*CODE_LEFT_OUT))
    return copy


def log_model(client: Any, run_id: str, package: Path, example: pd.DataFrame, output: pd.DataFrame) -> str:
    """Save the package as a pyfunc model into the run's ``model/`` folder; returns its artifact URI."""
    import mlflow.pyfunc  # mlflow: only where a model is logged (tasks and the CLI import this module)
    from mlflow.models import ModelSignature  # mlflow: only where a model is logged
    from mlflow.types import ColSpec, Schema  # mlflow: only where a model is logged

    def schema(frame: pd.DataFrame) -> Schema:
        return Schema([ColSpec("double" if pd.api.types.is_float_dtype(frame[c]) else
                               "long" if pd.api.types.is_integer_dtype(frame[c]) else "string", c)
                       for c in frame.columns])

    signature = ModelSignature(inputs=schema(example), outputs=schema(output))
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        target = Path(tmp) / "model"
        code = model_code(Path(tmp) / "code")
        mlflow.pyfunc.save_model(str(target), python_model=str(PYFUNC_CODE), artifacts={"package": str(package)},
                                 code_paths=[str(code)], signature=signature, input_example=example,
                                 pip_requirements=pip_requirements())
        client.log_artifacts(run_id, str(target), "model")
    return f"{client.get_run(run_id).info.artifact_uri}/model"


def tensors_digest(path: Path) -> str:
    """A safetensors file's tensors (name, dtype, shape, bytes), read from its header without torch; the
    header's free-form ``__metadata__`` is left out."""
    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    body = data[8 + size:]
    tensors = []
    for name in sorted(k for k in header if k != "__metadata__"):
        start, end = header[name]["data_offsets"]
        tensors.append((name, header[name]["dtype"], header[name]["shape"],
                        hashlib.sha256(body[start:end]).hexdigest()))
    return stable_hash("safetensors", tensors)


def skops_digest(path: Path) -> str:
    """A skops file's fitted pipeline, independent of when and in which process it was dumped (see the module
    docstring): the schema with cached references resolved, object ids and writer versions left out, and each
    array file replaced by the digest of its bytes."""
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
        files = {name: hashlib.sha256(archive.read(name)).hexdigest() for name in archive.namelist()
                 if name != "schema.json"}
    nodes: dict[Any, Any] = {}

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if "__id__" in node and node.get("__loader__") != "CachedNode":
                nodes.setdefault(node["__id__"], node)
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    def canonical(node: Any, seen: tuple[Any, ...] = ()) -> Any:
        if isinstance(node, dict):
            if node.get("__loader__") == "CachedNode":  # a reference to an object written elsewhere
                ref = node.get("__id__")
                return {"cycle": True} if ref in seen or ref not in nodes else canonical(nodes[ref], seen)
            inner = (*seen, node["__id__"]) if "__id__" in node else seen
            out = {}
            for key in sorted(node):
                if key == "__id__" or key in _SKOPS_WRITER:
                    continue
                value = node[key]
                out[key] = files.get(value, value) if key == "file" and isinstance(value, str) else canonical(value,
                                                                                                               inner)
            return out
        if isinstance(node, list):
            return [canonical(v, seen) for v in node]
        return node

    collect(schema)
    return stable_hash("skops", canonical(schema))


def package_identity(folder: Path) -> str:
    """What a package is (see the module docstring): equal for two packages that predict identically whatever
    code version built them, different when a weight, a fitted pipeline or a setting differs."""
    folder = Path(folder)
    info = read_info(folder)
    files: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == PACKAGE_FILE:
            continue
        if path.suffix == ".safetensors":
            files[name] = tensors_digest(path)
        elif path.suffix == ".skops":
            files[name] = skops_digest(path)
        elif name.startswith("folds/") and path.name == "config.json":
            config = json.loads(path.read_text())
            files[name] = {k: v for k, v in config.items() if k not in _NOT_FOLD_IDENTITY}
        else:
            files[name] = sha256_file(path)
    return stable_hash("package-identity", {k: v for k, v in info.items() if k not in _NOT_IDENTITY}, files)


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
        from mlflow.exceptions import MlflowException  # mlflow: loaded with the client, not with this module

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(
                self.name, description="Survival of patients with brain metastases: fold ensemble of a hybrid "
                                       "CNN + tabular network (survival_model). Aliases: challenger, champion.")

    def find_version(self, identity: str) -> Version | None:
        """The version registered from a package with this content identity (:func:`package_identity`), if any."""
        for v in self.versions():
            if v.tags.get(IDENTITY_TAG) == identity:
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
        from mlflow.exceptions import MlflowException  # mlflow: loaded with the client, not with this module

        try:
            v = self.client.get_model_version(self.name, str(number))
        except MlflowException:
            raise RegistryError(f"model {self.name!r} has no version {number}") from None
        return Version(int(v.version), tuple(v.aliases or ()), v.run_id,
                       pd.Timestamp(v.creation_timestamp, unit="ms", tz="UTC"), dict(v.tags or {}))

    def versions(self) -> list[Version]:
        """Every version, newest first (empty when the model is not registered yet)."""
        from mlflow.exceptions import MlflowException  # mlflow: loaded with the client, not with this module

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
        from mlflow.exceptions import MlflowException  # mlflow: loaded with the client, not with this module

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
        from mlflow.exceptions import MlflowException  # mlflow: loaded with the client, not with this module

        try:
            tags = self.client.get_registered_model(self.name).tags or {}
        except MlflowException:
            return []
        entries: list[dict[str, Any]] = json.loads(tags.get(HISTORY_TAG, "[]"))
        return entries

    def test_sets(self) -> dict[str, int]:
        """Gate decisions served per locked test set (fingerprint -> count)."""
        from mlflow.exceptions import MlflowException  # mlflow: loaded with the client, not with this module

        try:
            tags = self.client.get_registered_model(self.name).tags or {}
        except MlflowException:
            return {}
        counts: dict[str, int] = json.loads(tags.get(TEST_SETS_TAG, "{}"))
        return counts

    def test_set_decisions(self, fingerprint: str) -> int:
        """How many gate decisions the locked test set ``fingerprint`` has served so far."""
        return int(self.test_sets().get(fingerprint, 0))

    def record_test_set_decision(self, fingerprint: str) -> int:
        """Count one more gate decision on the test set ``fingerprint``; returns its count, this one included.
        The tag keeps the most recently used test sets first to go last: when it outgrows MLflow's tag limit the
        least recently used are dropped (with a warning). Not atomic by itself (read, then write): the registry
        flow calls it under :func:`registry_lock`."""
        self.ensure_model()
        counts = self.test_sets()
        count = counts.pop(fingerprint, 0) + 1
        counts[fingerprint] = count
        while len(json.dumps(counts)) > _HISTORY_CHARS and len(counts) > 1:
            dropped = next(iter(counts))
            log.warning("%s: the count of gate decisions on test set %s (%d) is dropped from %s (tag size limit)",
                        self.name, dropped, counts.pop(dropped), TEST_SETS_TAG)
        self.client.set_registered_model_tag(self.name, TEST_SETS_TAG, json.dumps(counts))
        return count

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
                "gate": v.tags.get("gate.decision", ""), "test_set": v.tags.get("gate.test_set", ""),
                "test_set_decisions": v.tags.get("gate.test_set_decisions", ""),
                "data": v.tags.get("data_fingerprint", "")[:12],
                "run_id": v.run_id or ""})
        return pd.DataFrame(rows)


def decisions_on_test_set(client: Any, model_name: str, fingerprint: str) -> int:
    """How many gate decisions of the registered model ``model_name`` the locked test set ``fingerprint``
    (``gate.fingerprint_test_set`` of its case ids) has served (0 when none, or no such model)."""
    return Registry(client, model_name).test_set_decisions(fingerprint)


def lock_file(work_dir: Path, model_name: str) -> Path:
    """The file :func:`registry_lock` locks for the registered model ``model_name``."""
    return Path(work_dir) / "registry" / "locks" / (re.sub(r"[^A-Za-z0-9._-]", "_", model_name) + ".lock")


@contextmanager
def registry_lock(path: Path, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block, waiting as long as another process
    (or another open of it in this one) holds it; ``waiting`` is told who holds it before the wait. The kernel
    releases the lock when the block ends or the process dies: a killed run leaves no stale lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
                waiting(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def registration_markdown(name: str, version: Version, decision: Decision | None, run_link: str) -> str:
    """What happened to a run's model: the gate's decision, that it held ``champion`` before it was gated, or
    that it was registered (and gated) before."""
    if decision is not None:
        text = decision.markdown(name, version.version)
    elif version.tags.get("gate.decision") == ALREADY_CHAMPION:
        text = (f"# {name}: version {version.version} is the champion already\n\n"
                f"{version.tags.get('gate.reason', '')}\n")
    else:
        gate = version.tags.get("gate.decision", "not gated")
        champion = "is" if CHAMPION in version.aliases else "is not"
        text = (f"# {name}: nothing new to register\n\nThis run's package is the same model (weights, fitted "
                f"pipelines and settings) as version {version.version}, registered before (gate: {gate}; it "
                f"{champion} the champion). No new version and no new gate decision (the locked test set was not "
                "read again).\n")
    return text + f"\nModel: `models:/{name}/{version.version}`; MLflow run: {run_link}\n"
