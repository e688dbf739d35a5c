"""The evaluation flow under a Prefect test harness: the stage (comparison and explanation) as a cached task and
the report beside it, the whole stage reused when nothing changed; the stage and the report on their own."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.evaluation import evaluation
from flows.imaging import imaging
from flows.ingest import ingest
from flows.training import training, variant_params
from survival_model.config import Params
from survival_model.evaluation.stage import Evaluate, render_report
from survival_model.stage import run
from tests.conftest import params_for, split_seed
from tests.flows.test_ingest_flow import task_states

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run_all(params: Params) -> tuple[object, dict[str, str], list[object], object]:
    cohort = ingest(params)
    table = imaging(params, cohort)
    trained = [training(params, cohort, table),
               *(training(variant_params(params, v), cohort, table) for v in params.evaluation.networks)]
    state = evaluation(params, cohort, table, trained, return_state=True)
    return state.result(), task_states(state.state_details.flow_run_id), trained, table


def test_the_evaluation_compares_explains_and_reports_and_is_reused_when_unchanged(
    tiny_cohort_master: Path, tmp_path: Path
) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work", **{"evaluation.networks": [{"variant": "tabular"}]})
    result, states, trained, _ = run_all(params)
    assert states == {"evaluation": "Completed", "write-report": "Completed"}
    folder = result.folder  # type: ignore[attr-defined]
    assert folder.parent == tmp_path / "work" / "evaluation"
    assert list(result.comparison.index)[:2] == [trained[0].name, "tabular-cox"]  # type: ignore[attr-defined]
    assert {"gpa", "ds_gpa", "oracle"} <= set(result.comparison.index)  # type: ignore[attr-defined]
    assert (folder / "explanation" / "gradcam.npz").is_file()  # the main (hybrid) network's Grad-CAM
    assert (folder / "explanation" / "models" / "1" / "importance.csv").is_file()  # the tabular one's importance
    assert not (folder / "explanation" / "models" / "1" / "gradcam.npz").exists()
    page = (folder / "report" / "report.html").read_text(encoding="utf-8")
    assert "Grad-CAM" in page and "Leakage audit" in page and "tabular-cox" in page

    again, states, _, _ = run_all(params)  # nothing changed: the stage is reused whole
    assert states == {} and again.folder == folder  # type: ignore[attr-defined]
    per_task = params_for(tiny_cohort_master, tmp_path / "work", **{"evaluation.networks": [{"variant": "tabular"}],
                                                                   "orchestration.reuse_unchanged_stages": False})
    _, states, _, _ = run_all(per_task)
    assert states and all(s == "Cached" for s in states.values()), states


def test_the_stage_and_the_report_run_on_their_own(tiny_cohort_master: Path, tmp_path: Path) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work", **{"training.network.variant": "tabular",
                                                                   "evaluation.gradcam": False})
    cohort = ingest(params)
    table = imaging(params, cohort)
    trained = training(params, cohort, table)
    clinical = tuple(params.training.tabular.clinical)
    stage = Evaluate((trained,), table, clinical, params.evaluation, None, params.work_dir)
    compared = run(stage)
    assert compared.folder == stage.folder() and run(stage).comparison.equals(compared.comparison)  # loaded again
    assert "oracle" not in compared.comparison.index and trained.name in compared.comparison.index
    explanation = compared.folder / "explanation"
    importance = pd.read_csv(explanation / "importance.csv")
    assert set(importance["kind"]) == {"tabular"} and not (explanation / "gradcam.csv").exists()
    assert not compared.reports(None)  # the report is written beside the stage, by render_report
    report = render_report(stage, compared)
    assert report.is_file() and "small test set" in (report.parent / "summary.md").read_text(encoding="utf-8")
    assert compared.reports(None) and not compared.reports(2)
    render_report(stage, compared, 2)  # the test set served two gate decisions since: named, replaced in place
    assert compared.reports(2) and compared.report_decisions() == 2

    twice = run(Evaluate((trained, trained), table, clinical, params.evaluation, None, params.work_dir))
    assert list(twice.comparison.index[:2]) == [trained.name, f"{trained.name} [{trained.folder.name[:8]}]"]  # apart

    seed = split_seed(tiny_cohort_master, test_fraction=0.3, start=7)  # another valid split of these patients
    assert seed is not None
    reseeded = params.model_copy(update={"training": params.training.model_copy(update={
        "splits": params.training.splits.model_copy(update={"seed": seed, "test_fraction": 0.3})})})
    other = training(reseeded, cohort, table)
    mixed = Evaluate((trained, other), table, clinical, params.evaluation, None, params.work_dir)
    with pytest.raises(ValueError, match="different splits"):
        run(mixed)
    assert not mixed.folder().exists()  # nothing half-written
