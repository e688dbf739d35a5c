"""Evaluation tasks beyond the stage itself (``survival_model.evaluation.stage.Evaluate``, run by
``tasks.stage.StageTasks``): the report, which names the registry's count of gate decisions on the test set
and is therefore not content-keyed (rendered into the stage's folder, replaced when that count changes)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from survival_model.evaluation.stage import Evaluate, EvaluationResult, render_report


@task(name="write-report", task_run_name="write-report")
def write_report(stage: Evaluate, result: EvaluationResult, test_set_decisions: int | None = None,
                 key_fingerprint: str | None = None) -> Path:
    """The HTML report and the Markdown summary (``test_set_decisions``: gate decisions the locked test set
    served before, from the registry)."""
    report = render_report(stage, result, test_set_decisions, key_fingerprint)
    get_run_logger().info("report: %s (the test set served %s gate decision(s) before)", report, test_set_decisions)
    return report
