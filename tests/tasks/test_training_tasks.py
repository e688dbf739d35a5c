"""Training tasks' helpers: a fold checkpoint is uploaded to MLflow once, later runs point to it."""

from __future__ import annotations

from pathlib import Path

from survival_model.imageio import write_text
from survival_model.tracking import Tracker
from survival_model.training.folds import FILES, FoldResult
from tasks.tracking import _log_checkpoint


def test_a_reused_fold_points_to_the_run_holding_its_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "fold"
    for name in FILES:
        write_text("x", folder / name)
    fold = FoldResult("fold-1", "key", folder, {})
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "test", tmp_path / "artifacts")
    first, second = tracker.start_run("first"), tracker.start_run("second")
    _log_checkpoint(tracker, first, fold)
    _log_checkpoint(tracker, second, fold)
    assert {a.path for a in tracker.client.list_artifacts(first, "checkpoint")} == {f"checkpoint/{n}" for n in FILES}
    assert tracker.client.list_artifacts(second, "checkpoint") == []
    tags = tracker.client.get_run(second).data.tags
    assert tags["checkpoint_run_id"] == first and tags["checkpoint_reused"] == "true"
    # the holding run deleted: the next run uploads the checkpoint again
    tracker.client.delete_run(first)
    third = tracker.start_run("third")
    _log_checkpoint(tracker, third, fold)
    assert len(tracker.client.list_artifacts(third, "checkpoint")) == len(FILES)
