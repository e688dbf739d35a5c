"""The command line as a user runs it: check, generate, run (main job), errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from survival_model.config import load_params, parse_override
from tests.conftest import TRAIN_FAST, split_seed

REPO = Path(__file__).resolve().parents[1]
TINY_SETTINGS = [
    "--set", "synthetic.shape=[48, 48, 31]", "--set", "synthetic.spacing_mm=5",
    "--set", "synthetic.patients={site_a: 4, site_b: 3, site_c: 3}",
    *[arg for key, value in TRAIN_FAST.items() if key != "training.network.backbone"
      for arg in ("--set", f"{key}={value}")],
]


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A copy of the repository's params.yaml in an empty folder, with a private key file."""
    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    data.setdefault("privacy", {})["key_file"] = str(tmp_path / "pseudonym.key")
    data.setdefault("servers", {})["home"] = str(tmp_path / "servers")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    shutil.copytree(REPO / "infra", tmp_path / "infra")
    return tmp_path


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` sets Prefect environment defaults for its process; keep them out of other tests."""
    for name in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        monkeypatch.setenv(name, os.environ.get(name, "")) if name in os.environ else monkeypatch.delenv(
            name, raising=False)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())


def test_generate_then_check(project: Path) -> None:
    params = str(project / "params.yaml")
    code, out = invoke("generate", "--params", params, "--workers", "1", *TINY_SETTINGS)
    assert code == 0, out
    assert (project / "data/synthetic/manifest.json").is_file()
    code, out = invoke("generate", "--params", params, "--workers", "1", *TINY_SETTINGS)
    assert code == 0 and "already holds this cohort" in out
    code, out = invoke("check", "--params", params)
    assert code == 0, out
    assert "valid" in out and "site_c" in out and "dicom" in out


def test_version() -> None:
    from importlib.metadata import version

    code, out = invoke("--version")
    assert code == 0 and out == f"survival-model {version('survival-model')}"


def test_bad_settings_exit_with_a_message(project: Path) -> None:
    code, out = invoke("check", "--params", str(project / "params.yaml"), "--set", "ingest.bogus=1")
    assert code == 2 and "ingest.bogus: unknown key" in out
    code, out = invoke("check", "--params", str(project / "missing.yaml"))
    assert code == 2 and "params file not found" in out
    code, out = invoke("check", "--params", str(project / "params.yaml"), "--overlay", str(project / "none.yaml"))
    assert code == 2 and "overlay file not found" in out
    (project / "bad.yaml").write_text("training:\n  fit:\n    epochz: 3\n", encoding="utf-8")
    code, out = invoke("check", "--params", str(project / "params.yaml"), "--overlay", str(project / "bad.yaml"))
    assert code == 2 and "training.fit.epochz: unknown key" in out


@pytest.fixture(scope="module")
def tiny_split_seed(tmp_path_factory: pytest.TempPathFactory) -> int:
    """A split seed that suits the cohort `run` generates with TINY_SETTINGS, made here the same way first
    (the split is drawn per patient from the images' bytes, which the same generator settings reproduce)."""
    from flows.cli import _generator_config
    from survival_model.synthetic.cohort import generate_cohort

    out = tmp_path_factory.mktemp("cli-cohort") / "synthetic"
    overrides = dict(parse_override(TINY_SETTINGS[i + 1]) for i in range(0, len(TINY_SETTINGS), 2))
    generate_cohort(_generator_config(load_params(REPO / "params.yaml", {**overrides, "synthetic.out_dir": str(out)}),
                                      workers=1))
    seed = split_seed(out)
    assert seed is not None
    return seed


@pytest.mark.usefixtures("prefect_harness", "clean_env")
def test_run_makes_the_cohort_when_missing_and_reports_where_results_are(project: Path, tiny_split_seed: int) -> None:
    params = str(project / "params.yaml")
    settings = [*TINY_SETTINGS, "--set", f"training.splits.seed={tiny_split_seed}"]
    code, out = invoke("run", "--params", params, "--temporary-server", "--backbone", "test_efficientnet", *settings)
    assert code == 0, out
    assert "generating it" in out
    assert "results" in out and "cohort.parquet" in out and "MLflow run" in out
    assert "backbone test_efficientnet" in out and "oracle (true risk)" in out and "locked test set" in out
    cohort_path = next((project / "work/ingest/cohort").glob("*/cohort.parquet"))
    cohort = pd.read_parquet(cohort_path)
    assert len(cohort) == 10 and set(cohort["site"]) == {"site_a", "site_b", "site_c"}
    assert (project / "work/mlflow/mlflow.db").is_file()
    code, out = invoke("run", "--params", params, "--temporary-server", "--backbone", "test_efficientnet", *settings)
    assert code == 0 and "generating" not in out


def test_realistic_is_the_shipped_overlay_laid_first_then_overlays_then_set(project: Path) -> None:
    from flows.cli import _load

    overlay = project / "mine.yaml"
    overlay.write_text("preprocess:\n  n4:\n    control_points: 6\n", encoding="utf-8")
    params, pairs = _load(project / "params.yaml", ["preprocess.registration.max_samples=30000"], realistic=True,
                          overlays=[overlay])
    assert params.preprocess.target_spacing_mm == (1.0, 1.0, 1.0) and params.synthetic.shape == (240, 240, 155)
    assert params.preprocess.n4.control_points == 6  # the user's overlay over the preset
    assert params.preprocess.registration.max_samples == 30000  # --set over both
    assert pairs["preprocess.n4.iterations"] == [30, 30, 30]  # the pairs go to the flow as its overrides
