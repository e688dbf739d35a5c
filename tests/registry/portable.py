"""A registered model used where this project is not: a fresh interpreter of the dependency environment
(every dependency, not ``survival_model``), started in another directory, loads and predicts with it through
MLflow alone, from whatever tracking server holds it. Shared by ``tests/registry/test_portable_model.py``
(a SQLite store) and the production-like test (a tracking server with S3 artifacts, authentication in
``env``): :func:`assert_portable`.

Each check runs in a subprocess of :func:`dependency_python` with ``PYTHONNOUSERSITE=1``, no ``PYTHON*``
variable, and the working directory given, so nothing of this checkout is importable there (asserted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
#: What an environment made from the model's requirements holds beside them: MLflow's virtualenv/uv
#: environments install these first (``python_env.yaml``'s ``build_dependencies``).
BUILD_DISTRIBUTIONS = frozenset({"pip", "setuptools", "wheel"})

#: Run by a fresh interpreter: whether ``survival_model`` imports there, and the model's requirements.
_REQUIREMENTS_SCRIPT = """\
import importlib.util, json, sys

import mlflow.pyfunc

uri, report = sys.argv[1:3]
with open(mlflow.pyfunc.get_model_dependencies(uri)) as requirements:
    lines = [line.strip() for line in requirements if line.strip() and not line.startswith("#")]
json.dump({"survival_model": importlib.util.find_spec("survival_model") is not None, "requirements": lines},
          open(report, "w"))
"""

#: Run by a fresh interpreter: with every top-level module listed in ``blocked`` made unimportable (those of
#: the installed distributions the model's requirements do not install), load the model with MLflow, predict
#: a parquet frame, and report where ``survival_model`` came from and which blocked modules were asked for.
_PYFUNC_SCRIPT = """\
import json, sys

uri, frame, out, blocked, report = sys.argv[1:6]
BLOCKED, asked = frozenset(json.load(open(blocked))), set()


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            asked.add(name.partition(".")[0])
            raise ModuleNotFoundError(f"No module named {name!r} (not in the model's requirements)", name=name)
        return None


sys.meta_path.insert(0, Block())
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model(uri)
model.predict(pd.read_parquet(frame)).to_parquet(out)
library = Path(sys.modules["survival_model"].__file__).parent
json.dump({"library": str(library), "blocked_imports": sorted(asked)}, open(report, "w"))
"""


def dependency_python() -> Path:
    """The Python of the environment that holds the project's dependencies (where MLflow is installed):
    ``.venv`` sees it through a ``.pth`` file, but it does not hold ``survival_model``."""
    site = Path(str(metadata.distribution("mlflow").locate_file("")))
    for folder in site.parents:
        if (folder / "pyvenv.cfg").is_file() and (folder / "bin" / "python").is_file():
            return folder / "bin" / "python"
    return Path(sys.executable)


def fresh_environment(tracking_uri: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what would make the checkout importable (``PYTHON*``,
    ``VIRTUAL_ENV``), with the user's site left out, no bytecode written (a model in a local artifact store is
    loaded in place), the tracking URI, and ``extra`` (credentials, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    return {**env, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "MLFLOW_TRACKING_URI": tracking_uri,
            **(extra or {})}


def _run(command: list[str], cwd: Path, env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=dict(env), capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=timeout, check=False)


def _check(done: subprocess.CompletedProcess[str], what: str) -> None:
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stderr[-4000:]}"


def _json_rows(frame: pd.DataFrame) -> list[list[object]]:
    """The rows as JSON values, exactly: Python floats (``repr`` round-trips, where ``DataFrame.to_json`` keeps
    at most 15 digits), None for missing values."""
    return [[None if pd.isna(v) else v.item() if hasattr(v, "item") else v for v in row]
            for row in frame.astype(object).itertuples(index=False)]


@dataclass(frozen=True)
class Elsewhere:
    """What fresh interpreters in another directory made of a registered model."""

    #: whether ``survival_model`` could be imported there before the model was loaded
    library_importable: bool
    #: the model's ``requirements.txt``
    requirements: list[str]
    #: ``mlflow.pyfunc.load_model(uri).predict(frame)``, with nothing importable beyond the requirements
    pyfunc: pd.DataFrame
    #: where that interpreter imported ``survival_model`` from (the model's ``code/``)
    library: Path
    #: top-level modules it tried to import that the requirements do not install (refused; for the record)
    blocked_imports: list[str]
    #: ``mlflow models predict -m uri -t json --env-manager local``
    cli: pd.DataFrame


def predict_elsewhere(model_uri: str, frame: pd.DataFrame, workdir: Path, *, tracking_uri: str,
                      python: Path | None = None, env: Mapping[str, str] | None = None,
                      access: Iterable[str] = (), timeout: float = 600) -> Elsewhere:
    """Predict ``frame`` with ``model_uri`` in fresh interpreters started in ``workdir``: through
    ``mlflow.pyfunc.load_model`` with every installed module the model's requirements do not install made
    unimportable (:func:`unrequired_modules`; ``access``: distributions the client needs to reach the artifact
    store, e.g. ``boto3`` for an ``s3://`` store that the tracking server does not proxy), and through
    ``mlflow models predict --env-manager local``."""
    python = python or dependency_python()
    workdir.mkdir(parents=True, exist_ok=True)
    environment = fresh_environment(tracking_uri, env)
    (workdir / "requirements_of_model.py").write_text(_REQUIREMENTS_SCRIPT, encoding="utf-8")
    done = _run([str(python), "requirements_of_model.py", model_uri, "requirements.json"], workdir, environment,
                timeout)
    _check(done, "mlflow.pyfunc.get_model_dependencies")
    first = json.loads((workdir / "requirements.json").read_text(encoding="utf-8"))

    (workdir / "blocked.json").write_text(json.dumps(sorted(unrequired_modules([*first["requirements"], *access]))),
                                          encoding="utf-8")
    (workdir / "predict_with_pyfunc.py").write_text(_PYFUNC_SCRIPT, encoding="utf-8")
    frame.to_parquet(workdir / "input.parquet")
    done = _run([str(python), "predict_with_pyfunc.py", model_uri, "input.parquet", "pyfunc.parquet",
                 "blocked.json", "report.json"], workdir, environment, timeout)
    _check(done, "mlflow.pyfunc.load_model(...).predict")
    report = json.loads((workdir / "report.json").read_text(encoding="utf-8"))

    payload = {"dataframe_split": {"columns": list(frame.columns), "data": _json_rows(frame)}}
    (workdir / "input.json").write_text(json.dumps(payload, allow_nan=False), encoding="utf-8")
    console = python.parent / "mlflow"
    command = [str(console)] if console.is_file() else [str(python), "-m", "mlflow"]
    done = _run([*command, "models", "predict", "-m", model_uri, "-i", "input.json", "-t", "json",
                 "-o", "cli.json", "--env-manager", "local"], workdir, environment, timeout)
    _check(done, "mlflow models predict")
    cli = pd.DataFrame(json.loads((workdir / "cli.json").read_text(encoding="utf-8"))["predictions"])
    return Elsewhere(bool(first["survival_model"]), list(first["requirements"]),
                     pd.read_parquet(workdir / "pyfunc.parquet"), Path(report["library"]),
                     list(report["blocked_imports"]), cli)


def dependency_closure(requirements: Iterable[str]) -> set[str]:
    """The canonical names of the distributions ``requirements`` install: each and, from the installed
    metadata, its dependencies (with the extras asked for and the markers true here)."""
    todo = [Requirement(r) for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            requires = metadata.distribution(requirement.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            dependency = Requirement(line)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dependency)
    return names


def unrequired_modules(requirements: Iterable[str]) -> set[str]:
    """The top-level modules of the installed distributions that neither ``requirements`` (with their
    dependencies, :func:`dependency_closure`) nor :data:`BUILD_DISTRIBUTIONS` install: what an environment made
    from the requirements would lack. A module that a required distribution provides too (a namespace such
    as ``google``) is not one; neither is ``survival_model``, which travels with the model."""
    wanted = dependency_closure([*requirements, *BUILD_DISTRIBUTIONS])
    return {module for module, providers in metadata.packages_distributions().items()
            if module != "survival_model" and module not in sys.stdlib_module_names
            and not {canonicalize_name(d) for d in providers} & wanted}


def assert_portable(model_uri: str, frame: pd.DataFrame, expected: pd.DataFrame, workdir: Path, *,
                    tracking_uri: str, python: Path | None = None, env: Mapping[str, str] | None = None,
                    access: Iterable[str] = (), timeout: float = 600) -> Elsewhere:
    """``model_uri`` predicts ``frame`` as ``expected`` (the in-process predictions) through MLflow alone, in
    fresh interpreters in ``workdir`` where ``survival_model`` cannot be imported (the library comes from the
    model's own code), whose requirements are all this environment's versions, pinned, with no
    ``survival-model``, and suffice: predicting works with every other installed distribution unimportable.

    ``tracking_uri`` and ``env`` (e.g. ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) say where the model is;
    ``access``: see :func:`predict_elsewhere`; ``python``: an interpreter that has the dependencies but not this
    project (default :func:`dependency_python`)."""
    found = predict_elsewhere(model_uri, frame, workdir, tracking_uri=tracking_uri, python=python, env=env,
                              access=access, timeout=timeout)
    assert not found.library_importable, (
        f"{python or dependency_python()} imports survival_model in {workdir}: this shows nothing about the model")
    assert found.library.parent.name == "code" and REPO not in found.library.parents, found.library
    pins = [Requirement(r) for r in found.requirements]
    assert pins and "survival-model" not in {canonicalize_name(p.name) for p in pins}, found.requirements
    for pin in pins:
        (specifier,) = pin.specifier
        assert specifier.operator == "==" and "+" not in specifier.version, pin
        assert metadata.version(pin.name).split("+")[0] == specifier.version, (pin, metadata.version(pin.name))

    expected = expected.reset_index(drop=True)
    pd.testing.assert_frame_equal(found.pyfunc.reset_index(drop=True), expected, rtol=1e-9)
    pd.testing.assert_frame_equal(found.cli[list(expected.columns)], expected, rtol=1e-9)
    return found
