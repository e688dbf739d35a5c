"""The registered model is portable: it carries the library's code and pins only distributions of the public
index, and it loads and predicts, through MLflow alone, in a fresh interpreter in another directory where this
checkout is not importable (``tests/registry/portable.py``)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from survival_model.registry import registry as registry_lib
from survival_model.registry.package import PackagedModel
from survival_model.registry.registry import (
    INFERENCE_DISTRIBUTIONS,
    RegistryError,
    model_code,
    pip_requirements,
)
from tests.conftest import PipelineRun
from tests.registry.portable import assert_portable, dependency_closure, unrequired_modules


def test_the_requirements_are_the_installed_versions_of_the_inference_distributions() -> None:
    requirements = pip_requirements()
    assert requirements == [f"{name}=={metadata.version(name).split('+')[0]}" for name in INFERENCE_DISTRIBUTIONS]
    assert not [r for r in requirements if r.lower().startswith(("survival-model", "survival_model"))]
    assert {"mlflow", "torch", "scikit-learn", "skops"} <= {r.split("==")[0] for r in requirements}


def test_a_local_version_label_is_dropped_and_a_missing_distribution_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_lib, "INFERENCE_DISTRIBUTIONS", ("torch",))
    monkeypatch.setattr(registry_lib.metadata, "version", lambda name: "2.4.0+cpu")
    assert pip_requirements() == ["torch==2.4.0"]  # PyTorch's CPU build: the public index has 2.4.0
    monkeypatch.undo()
    monkeypatch.setattr(registry_lib, "INFERENCE_DISTRIBUTIONS", ("mlflow", "no-such-distribution-4f2a"))
    with pytest.raises(RegistryError, match="no-such-distribution-4f2a is not installed"):
        pip_requirements()


def test_the_model_carries_the_library_without_caches(tmp_path: Path) -> None:
    (registry_lib.LIBRARY / "registry" / "__pycache__").mkdir(exist_ok=True)  # as any import of it leaves
    code = model_code(tmp_path)
    assert code == tmp_path / "survival_model"
    for needed in ("__init__.py", "registry/package.py", "registry/pyfunc_model.py", "models/network.py",
                   "features/harmonise.py", "resources/radiomics.yaml"):
        assert (code / needed).is_file(), needed
    files = {p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file()}
    assert files == {p.relative_to(registry_lib.LIBRARY).as_posix() for p in registry_lib.LIBRARY.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert not list(code.rglob("__pycache__"))


def test_what_the_requirements_do_not_install_is_blocked() -> None:
    closure = dependency_closure(["mlflow", "scikit-survival"])
    assert {"mlflow", "mlflow-skinny", "numpy", "pandas", "scikit-learn", "scipy"} <= closure
    assert not {"torch", "prefect", "pytest"} & closure
    blocked = unrequired_modules(["mlflow"])
    assert {"torch", "prefect", "flows", "tasks", "pytest"} <= blocked  # flows, tasks: this checkout's
    assert not {"mlflow", "numpy", "pip", "setuptools", "survival_model", "json"} & blocked
    assert "torch" not in unrequired_modules(["mlflow", "torch"])


@pytest.mark.slow
def test_the_registered_model_predicts_in_a_fresh_process_elsewhere(pipeline_run: PipelineRun,
                                                                     tmp_path: Path) -> None:
    import mlflow
    from mlflow.models import Model

    params = pipeline_run.params
    registered = pipeline_run.result.registry
    assert registered is not None
    uri = f"models:/{params.registry.model_name}/{registered.version}"
    source = pipeline_run.registry().client.get_model_version_download_uri(params.registry.model_name,
                                                                           str(registered.version))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "downloaded"),
                                                     tracking_uri=params.mlflow_uri))
    # what the model holds: MLflow's files, the pyfunc source, the package, the library's code; no tests or data
    assert sorted(p.name for p in (local / "code").iterdir()) == ["survival_model"]
    assert not [p for p in local.rglob("*") if p.suffix in (".nii", ".gz", ".npy", ".parquet", ".csv", ".db")]
    assert not list(local.rglob("test_*.py")) and not list(local.rglob("__pycache__"))
    assert "survival-model" not in (local / "requirements.txt").read_text()
    frame = Model.load(str(local)).load_input_example(str(local))
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2
    expected = PackagedModel.load(registered.package).predict(frame)

    found = assert_portable(uri, frame, expected, tmp_path / "elsewhere", tracking_uri=params.mlflow_uri)
    assert found.requirements == pip_requirements()
