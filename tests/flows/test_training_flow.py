"""The training flow under a Prefect test harness: image inputs and folds as tasks, reuse, re-runs only on
change."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.imaging import imaging
from flows.ingest import ingest
from flows.training import training
from survival_model.config import Params
from survival_model.training.splits import Splits
from tasks.privacy import pseudonymiser
from tests.conftest import params_for
from tests.flows.test_ingest_flow import task_states

pytestmark = pytest.mark.usefixtures("prefect_harness")


def cohort_key_fingerprint(params: Params) -> str:
    return pseudonymiser(params.privacy).fingerprint


def run_training(params: Params) -> tuple[object, dict[str, str]]:
    cohort = ingest(params)
    table = imaging(params, cohort)
    state = training(params, cohort, table, return_state=True)
    return state.result(), task_states(state.state_details.flow_run_id)


def test_folds_train_as_tasks_the_ensemble_is_scored_and_only_a_change_retrains(
    tiny_cohort_master: Path, tmp_path: Path
) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work")
    result, states = run_training(params)
    inputs = {n: s for n, s in states.items() if n.startswith("inputs-")}  # one image input per patient
    assert inputs and set(inputs.values()) == {"Completed"}, states
    assert {n: s for n, s in states.items() if n not in inputs} == {
        "train-fold-1": "Completed", "train-fold-2": "Completed", "evaluate-ensemble": "Completed"}, states
    splits = Splits.load(result.splits_path)  # type: ignore[attr-defined]
    predictions = result.predictions()  # type: ignore[attr-defined]
    assert sorted(predictions["case_id"]) == sorted(splits.test) and len(splits.test) >= 2  # 2 + site C's draws
    metrics = result.metrics  # type: ignore[attr-defined]
    assert metrics["oracle"] is not None  # matched through the pseudonyms
    assert metrics["oracle"]["patients"] == len(splits.test)
    assert splits.pseudonym_key_fingerprint == cohort_key_fingerprint(params)  # the ids' key, by fingerprint
    assert set(metrics["cv"]["per_fold"]) == {"fold-1", "fold-2"}
    assert (result.splits_path.parent / "summary.csv").is_file()  # type: ignore[attr-defined]

    # nothing changed: the stage is reused whole, no task runs
    again, states = run_training(params)
    assert states == {} and again.folder == result.folder  # type: ignore[attr-defined]
    # without stage reuse, every task is a cache hit
    per_task = params_for(tiny_cohort_master, tmp_path / "work", **{"orchestration.reuse_unchanged_stages": False})
    _, states = run_training(per_task)
    assert states and all(s == "Cached" for s in states.values()), states
    # a setting that does not change what is learned (where it trains) keeps the folds
    _, states = run_training(params_for(tiny_cohort_master, tmp_path / "work", **{"training.fit.device": "cpu"}))
    assert states == {} or all(s == "Cached" for s in states.values()), states
    # a learning setting retrains the folds; the image inputs are unchanged and stay cached
    changed = params_for(tiny_cohort_master, tmp_path / "work", **{"training.fit.learning_rate": 0.002})
    other, states = run_training(changed)
    assert {s for n, s in states.items() if n.startswith("inputs-")} == {"Cached"}, states
    assert states["train-fold-1"] == "Completed" and states["train-fold-2"] == "Completed"
    assert other.folder != result.folder  # type: ignore[attr-defined]
    pd.testing.assert_series_equal(other.predictions()["case_id"], predictions["case_id"])  # type: ignore[attr-defined]
