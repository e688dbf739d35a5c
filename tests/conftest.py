"""Shared fixtures: a tiny synthetic cohort (generated once per session), params pointing at it,
and Prefect settings for tests (analytics off, a throw-away Prefect home)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before anything imports Prefect: its settings are read on import.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.setdefault("PREFECT_HOME", str(_PREFECT_HOME))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from survival_model.config import Params, load_params  # noqa: E402
from survival_model.synthetic.cohort import GeneratorConfig, generate_cohort, layout_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Training small enough for the 10-patient cohort and for seconds of CPU: 2 folds, 2 epochs, timm's
#: test network on 2 slices of 32 x 32. (The split seed is chosen per cohort: :func:`split_seed`.)
TRAIN_FAST: dict[str, Any] = {
    "training.splits.folds": 2,
    "training.fit.epochs": 2, "training.fit.tabular_penalties": [0.1, 1.0],
    "training.network.backbone": "test_efficientnet", "training.network.image_bottleneck": 4,
    "training.inputs.slices": 2, "training.inputs.size": 32,
    "evaluation.bootstrap": 50, "evaluation.score_resamples": 20, "evaluation.importance_repeats": 2,
}
TINY = {"patients": {"site_a": 4, "site_b": 3, "site_c": 3}, "shape": (48, 48, 31), "spacing_mm": 5.0}
#: Tests marked ``slow`` by where they live: flows under a Prefect API, the command line's runs, real servers
#: and real data (``-m "not slow"`` leaves the unit tests; a test elsewhere says so with its own marker).
SLOW_TESTS = ("flows/", "test_cli.py", "test_servers.py", "test_realdata")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    for item in items:
        if item.path.resolve().relative_to(tests).as_posix().startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


def tiny_config(out_dir: Path, **changes: Any) -> GeneratorConfig:
    return GeneratorConfig(out_dir=out_dir, seed=7, **{**TINY, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_cohort_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny three-site cohort with every bad patient, generated once (read-only: copy to modify)."""
    out = tmp_path_factory.mktemp("cohort") / "synthetic"
    generate_cohort(tiny_config(out))
    return out


@pytest.fixture()
def tiny_cohort(tiny_cohort_master: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny cohort that a test may modify."""
    copy = tmp_path / "synthetic"
    shutil.copytree(tiny_cohort_master, copy)
    return copy


def split_seed(data_dir: Path, *, test_fraction: float = 0.2, folds: int = 2, start: int = 20250515) -> int | None:
    """The first seed from ``start`` for which the split rule gives the generated cohort in ``data_dir`` (its
    good patients with an outcome) a valid locked test set: at least 2 patients, a death among them, and
    ``2 * folds`` development patients; preferably of ``round(test_fraction * n)`` patients, as a fixed-size
    split would (so that the folds keep enough training patients to set some aside for stopping). A
    10-patient cohort's per-patient draws (from the source images' digests) fail that for many seeds, and
    which ones changes with the generator's images; so tests choose the seed for the data they have (the same
    generator settings give the same image bytes, DICOM included: its dates and times are fixed). None when
    no seed in 500 works (e.g. a cohort to predict, without outcomes)."""
    from survival_model.ingest.discovery import discover_cases
    from survival_model.ingest.images import source_digest
    from survival_model.training.splits import in_test_set

    truth = pd.read_csv(data_dir / "ground_truth" / "patients.csv", dtype={"source_id": str})
    good = truth[truth["bad_reason"].isna() & truth["event"].notna()]
    params = load_params(REPO / "params.yaml", {k: v for k, v in overrides_for(data_dir, data_dir, seed=False).items()
                                                 if k.startswith("institutions.")})
    digests = {(site, case.source_id): source_digest(case) for site, institution in params.institutions.items()
               for case in discover_cases(site, institution.images)}
    rows = [(digests[(r.site, r.source_id)], int(r.event)) for r in good.itertuples()
            if (r.site, r.source_id) in digests]
    target = max(2, round(test_fraction * len(rows)))
    valid = []
    for seed in range(start, start + 500):
        drawn = [(in_test_set(seed, test_fraction, d), event) for d, event in rows]
        test = [event for in_test, event in drawn if in_test]
        if len(test) >= 2 and sum(test) >= 1 and len(drawn) - len(test) >= 2 * folds:
            if len(test) == target:
                return seed
            valid.append(seed)
    return valid[0] if valid else None


def params_for(data_dir: Path, work_dir: Path, *, cold: bool = False, **overrides: Any) -> Params:
    """The repository's params.yaml pointed at a generated cohort and a private work directory.

    A new work directory starts as a copy of the session's warm one for this cohort (:func:`warm_work`): its
    stages' folders are content-keyed, so whatever the test's settings, every stage whose inputs are
    unchanged loads instead of computing, and any other recomputes as in a cold run. ``cold``: start empty
    (the tests of a cold ingestion and a cold imaging run)."""
    params = load_params(REPO / "params.yaml", overrides_for(data_dir, work_dir, **overrides))
    if not cold and not work_dir.exists():
        warm = warm_work(data_dir)
        shutil.copytree(warm / "work", work_dir, symlinks=True)
        if not params.privacy.key_file.exists():  # the same key gives the same case ids, hence the same keys
            shutil.copy2(warm / "pseudonym.key", params.privacy.key_file)
    return params


#: Warm work directories of this session, by the digest of the cohort's ground truth (copies of one cohort
#: share one): built once, read-only afterwards.
_WARM: dict[str, Path] = {}


def warm_work(data_dir: Path) -> Path:
    """A folder holding ``work/`` (ingestion, preprocessing and features of the cohort in ``data_dir``, run
    through the library's stages with the repository's settings) and the ``pseudonym.key`` it was made with."""
    import hashlib

    from survival_model.features.stage import Features
    from survival_model.ingest.cohort import run_ingestion
    from survival_model.preprocess.stage import Preprocess, ingested_patient, site_imaging
    from survival_model.stage import run
    from tasks.privacy import pseudonymiser

    digest = hashlib.sha256((data_dir / "ground_truth" / "patients.csv").read_bytes()).hexdigest()
    if digest in _WARM:
        return _WARM[digest]
    root = Path(tempfile.mkdtemp(prefix="warm-work-"))
    params = load_params(REPO / "params.yaml", overrides_for(data_dir, root / "work", seed=False))
    cohort = run_ingestion(params, pseudonymiser(params.privacy))
    for row in cohort.cohort().to_dict("records"):
        pre = run(Preprocess(ingested_patient(row), site_imaging(params.institutions[str(row["site"])]),
                             params.preprocess, params.work_dir))
        if pre.patient is not None:
            run(Features(pre.patient, params.features, params.work_dir))
    _WARM[digest] = root
    return root


def overrides_for(data_dir: Path, work_dir: Path, seed: bool = True, **overrides: Any) -> dict[str, Any]:
    """The overrides of :func:`params_for` (what a flow taking ``params_path`` and ``overrides`` needs), with
    a split seed that suits the cohort (:func:`split_seed`) unless ``overrides`` set one."""
    if seed and "training.splits.seed" not in overrides:
        found = split_seed(data_dir, test_fraction=overrides.get("training.splits.test_fraction", 0.2),
                           folds=overrides.get("training.splits.folds", TRAIN_FAST["training.splits.folds"]))
        overrides = {**overrides, **({"training.splits.seed": found} if found is not None else {})}
    return {
        "work_dir": str(work_dir),
        "privacy.key_file": str(work_dir.parent / "pseudonym.key"),
        **layout_overrides(data_dir),
        **TRAIN_FAST,
        **overrides,
    }


@pytest.fixture()
def tiny_params(tiny_cohort_master: Path, tmp_path: Path) -> Params:
    return params_for(tiny_cohort_master, tmp_path / "work")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole session (starting one takes 10-30 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def realdata_dir() -> Path | None:
    """The shared real-data folder, if this machine has it (tests using it skip otherwise)."""
    candidates = [os.environ.get("SURVIVAL_MODEL_REALDATA"), REPO.parent / "shared" / "realdata",
                  Path("/work/shared/realdata")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


#: The session's one pipeline run (:func:`pipeline_run`), shared by the pipeline, registry and prediction tests:
#: the first model is promoted without a baseline (on 10 patients, beating the GPA is luck), a permissive gate
#: with a test set the gate can compare (4-5 patients), the tabular-only network beside the main one, and only
#: what the registry needs otherwise (the GPA baseline, no Grad-CAM).
PIPELINE_SETTINGS: dict[str, Any] = {
    "registry.gate.first_model_baseline": "none", "evaluation.networks": [{"variant": "tabular"}],
    "registry.gate.ibs_margin": None, "registry.gate.confidence": 0.5, "registry.gate.min_finite": 0.5,
    "registry.gate.resamples": 500, "evaluation.baselines": ["gpa"], "evaluation.gradcam": False,
    "training.splits.test_fraction": 0.45,
}


class PipelineRun:
    """The session's pipeline run: its overrides of params.yaml, its result and its params."""

    def __init__(self, overrides: dict[str, Any], result: Any) -> None:
        self.overrides = overrides
        self.result = result
        self.params: Params = load_params(REPO / "params.yaml", overrides)

    def registry(self) -> Any:
        from survival_model.registry.registry import Registry
        from survival_model.tracking import Tracker

        return Registry(Tracker.from_params(self.params).client, self.params.registry.model_name)


@pytest.fixture(scope="session")
def pipeline_run(tiny_cohort_master: Path, tmp_path_factory: pytest.TempPathFactory,
                 prefect_harness: None) -> PipelineRun:
    """One run of the whole pipeline flow on the tiny cohort (from the warm work directory), for every test that
    asserts on a pipeline run: what it tracked and published, what it registered, what predicts with it."""
    from flows.pipeline import pipeline

    work = tmp_path_factory.mktemp("pipeline") / "work"
    overrides = overrides_for(tiny_cohort_master, work, **PIPELINE_SETTINGS)
    params_for(tiny_cohort_master, work, **PIPELINE_SETTINGS)  # the work directory starts as the warm copy
    return PipelineRun(overrides, pipeline(str(REPO / "params.yaml"), overrides))

