"""The one Prefect adapter (tasks.stage): a stage's task is cached under the stage's own key, and a hit whose
output files are gone runs the stage again."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from prefect.states import State

from survival_model.config import Params
from tasks.stage import StageTasks
from tests.test_stage import Square

pytestmark = pytest.mark.usefixtures("prefect_harness")


def states(params: Params, stage: Square) -> State[int]:
    @flow(name="stage-task-test")
    def one() -> State[int]:
        run = StageTasks(params)
        state: State[int] = run.task(stage)(stage.label(), stage, run.work_dir_id(stage), return_state=True)
        return state

    return one()


def test_a_stage_task_is_named_by_the_stage_and_cached_by_its_key(tiny_params: Params, tmp_path: Path) -> None:
    stage = Square(6, tmp_path / "work")
    run = StageTasks(tiny_params)
    assert run.task(stage).name == "square" and run.task(stage) is run.task(Square(5, tmp_path))
    first = states(tiny_params, stage)
    assert first.is_completed() and first.name != "Cached" and first.result() == 36
    second = states(tiny_params, Square(6, tmp_path / "work"))
    assert second.name == "Cached" and second.result() == 36
    other = states(tiny_params, Square(7, tmp_path / "work"))
    assert other.name != "Cached" and other.result() == 49


def test_a_hit_without_its_outputs_runs_the_stage_again(tiny_params: Params, tmp_path: Path) -> None:
    stage = Square(9, tmp_path / "work")
    assert states(tiny_params, stage).result() == 81
    (stage.folder() / "out.txt").unlink()
    again = states(tiny_params, Square(9, tmp_path / "work"))
    assert again.name != "Cached" and again.result() == 81
    assert (stage.folder() / "out.txt").read_text() == "81"
