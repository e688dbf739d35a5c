"""The comparison of networks with the baselines and the oracle on the same splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import EvaluationParams, ImageInputParams, SplitParams
from survival_model.evaluation.stage import NetworkRun, compare, load_comparison, model_risks, run_comparison
from survival_model.metrics import harrell_c
from survival_model.training.splits import Splits, make_splits
from tests.evaluation.cohorts import clinical_cohort


def noisy_network(splits: Splits, oracle: pd.Series, noise: float, seed: int, name: str = "network") -> NetworkRun:
    """A "network" that sees the truth through noise, with per-fold risks like a trained one."""
    rng = np.random.default_rng(seed)
    risk = oracle + rng.normal(0, noise, len(oracle))
    folds = tuple((risk.loc[list(f.train)], risk.loc[list(f.validation)]) for f in splits.folds)
    return NetworkRun(name, risk.loc[list(splits.development)], risk.loc[list(splits.test)], None, folds)


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.Series, Splits]:
    table, oracle = clinical_cohort(240, 5, sites="abc")
    return table, oracle, make_splits(table.assign(source_digest=table["case_id"]), SplitParams(folds=3))


CLINICAL = ["age", "kps", "extracranial", "n_brain_mets", "sex"]


def test_every_model_is_scored_on_the_same_test_patients_beside_the_oracle(cohort: tuple) -> None:
    table, oracle, splits = cohort
    evaluation = EvaluationParams(score_resamples=20, baselines=["gpa", "cox_clinical", "rsf"])
    models, cv, oof = model_risks(table, splits, [noisy_network(splits, oracle, 0.5, 0)], CLINICAL, evaluation,
                                  oracle)
    assert list(models) == ["network", "gpa", "cox_clinical", "rsf", "oracle"]
    assert set(cv) == {"network", "gpa", "cox_clinical", "rsf"}
    # out of fold: every development patient scored by the model of the fold that validated it
    assert set(oof.risks) == set(models) and oof.case_ids == tuple(splits.development)
    fold = splits.folds[1]
    inside = np.isin(oof.case_ids, fold.validation)
    assert (oof.fold[inside] == 1).all() and np.isfinite(oof.risks["cox_clinical"]).all()
    from survival_model.evaluation.baselines import baselines, fit_baseline
    from survival_model.evaluation.stage import rows

    own = fit_baseline(baselines(CLINICAL)["cox_clinical"], rows(table, fold.train), evaluation.seed)
    expected = own.risk(rows(table, fold.validation)) - own.risk(rows(table, fold.train)).mean()  # centred
    np.testing.assert_allclose(oof.risks["cox_clinical"][inside], expected)
    from survival_model.features.scores import gpa

    np.testing.assert_allclose(oof.risks["gpa"][inside], -gpa(rows(table, fold.validation))[0])  # not centred
    comparison, per_site = compare(table, splits, models, evaluation)
    assert list(comparison.index) == list(models)
    c = comparison["harrell_c"]
    test = table.set_index("case_id").loc[list(splits.test)]
    expected = harrell_c(oracle.loc[list(splits.test)], test["time_days"], test["event"])
    assert c["oracle"] == pytest.approx(expected, abs=1e-9)  # the paired bootstrap's full sample: scikit-survival's
    assert c["oracle"] > 0.6 and c["network"] > 0.6
    assert comparison.loc["network", "delta_harrell_c"] > 0 and np.isnan(comparison.loc["gpa", "delta_harrell_c"])
    assert set(per_site.columns) == {"site_a", "site_b", "site_c"} and list(per_site.index) == list(models)


def test_every_score_has_a_mean_and_sd_over_the_folds(cohort: tuple) -> None:
    table, oracle, splits = cohort
    evaluation = EvaluationParams(score_resamples=0, baselines=["gpa"])
    net = noisy_network(splits, oracle, 0.3, 1)
    _, cv, _ = model_risks(table, splits, [net], CLINICAL, evaluation, None)
    scores = cv["network"]
    assert {"harrell_c", "uno_c", "integrated_brier", "auc_12m", "mae_days_uncensored"} <= set(scores)
    by_fold = [harrell_c(v, table.set_index("case_id").loc[list(v.index), "time_days"],
                         table.set_index("case_id").loc[list(v.index), "event"]) for _, v in net.folds]
    assert scores["harrell_c"]["mean"] == pytest.approx(np.mean(by_fold))
    assert scores["harrell_c"]["sd"] == pytest.approx(np.std(by_fold, ddof=1))
    assert scores["harrell_c"]["folds"] == 3 and 0 < scores["integrated_brier"]["mean"] < 0.5


def test_a_network_with_its_own_predicted_days_is_scored_on_them(cohort: tuple, tmp_path: Path) -> None:
    table, oracle, splits = cohort
    net = noisy_network(splits, oracle, 0.3, 2)
    test = table.set_index("case_id").loc[list(splits.test)]
    perfect = NetworkRun("timer", net.dev, net.test, test["time_days"].astype(float), net.folds)
    evaluation = EvaluationParams(score_resamples=0, baselines=["gpa"])
    result = run_comparison(table, splits, [net, perfect], CLINICAL, evaluation, None, tmp_path / "stage")
    assert result.comparison.loc["timer", "mae_days_uncensored"] == 0  # its own days are the truth here
    assert result.comparison.loc["network", "mae_days_uncensored"] > 0  # a risk score: Breslow medians
    risks = result.risks()
    assert set(risks["model"]) == {"network", "timer", "gpa"}
    assert len(risks[(risks["model"] == "gpa") & (risks["set"] == "test")]) == len(splits.test)
    again = load_comparison(tmp_path / "stage")
    assert again is not None and again.comparison.equals(result.comparison)
    table_md = (tmp_path / "stage" / "comparison" / "table.md").read_text(encoding="utf-8")
    assert "CV" in table_md and "Out of fold" in table_md
    assert "headroom" not in again.oof.columns  # no oracle given here: no headroom
    assert "vs_gpa_harrell_c_low" in again.oof.columns and set(again.oof.index) == {"network", "timer", "gpa"}


def test_the_stage_is_keyed_by_what_it_reads_and_loads_only_when_finished(cohort: tuple, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from survival_model.evaluation.stage import Evaluate, EvaluationImages, evaluation_files, load_evaluation

    table, oracle, splits = cohort
    trained = (SimpleNamespace(folder=tmp_path / "training" / "runs" / "0123456789abcdef"),)
    features = SimpleNamespace(folder=tmp_path / "features" / "table" / "fedcba9876543210")
    evaluation = EvaluationParams(score_resamples=0, baselines=["gpa"])
    stage = Evaluate(trained, features, tuple(CLINICAL), evaluation, oracle, tmp_path)  # type: ignore[arg-type]
    assert stage.folder() == tmp_path / "evaluation" / stage.key()[:16]
    images = EvaluationImages({"p1": tmp_path / "p1.npy"}, {"p1": tmp_path / "p1.nii.gz"}, ImageInputParams())
    assert stage.with_images(images).key() == stage.key()  # the training runs' keys hold the image inputs'
    others = [
        Evaluate(trained, features, tuple(CLINICAL), evaluation, oracle * 2, tmp_path),  # type: ignore[arg-type]
        Evaluate(trained, features, tuple(CLINICAL), evaluation, None, tmp_path),  # type: ignore[arg-type]
        Evaluate(trained, features, tuple(CLINICAL[:2]), evaluation, oracle, tmp_path),  # type: ignore[arg-type]
        Evaluate(trained, features, tuple(CLINICAL), evaluation.model_copy(update={"seed": 1}), oracle,  # type: ignore[arg-type]
                 tmp_path),
        Evaluate(trained * 2, features, tuple(CLINICAL), evaluation, oracle, tmp_path),  # type: ignore[arg-type]
    ]
    assert len({stage.key(), *(o.key() for o in others)}) == 1 + len(others)

    folder = stage.folder()
    result = run_comparison(table, splits, [noisy_network(splits, oracle, 0.3, 3)], CLINICAL, evaluation, None, folder)
    assert stage.load(folder) is None  # the comparison alone: the explanation is missing
    for name in ("importance.csv", "importance.png"):
        (folder / "explanation").mkdir(exist_ok=True)
        (folder / "explanation" / name).write_text("x", encoding="utf-8")
    loaded = stage.load(folder)
    assert loaded is not None and loaded.comparison.equals(result.comparison)
    assert load_evaluation(folder) is None and not loaded.reports(None)  # no report yet: the whole stage is not done
    (folder / "report").mkdir()
    for name in ("report.html", "summary.md"):
        (folder / "report" / name).write_text("x", encoding="utf-8")
    (folder / "report" / "audit.json").write_text('{"test_set_decisions": 1}', encoding="utf-8")
    assert load_evaluation(folder) is not None and loaded.reports(1) and not loaded.reports(None)
    assert set(evaluation_files(folder, report=True)) >= set(stage.outputs(folder))
