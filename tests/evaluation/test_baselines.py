"""Clinical baselines: the GPA and DS-GPA by hand, fitted Cox / elastic-net Cox / random survival forest."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import KFold, check_cv
from sklearn.pipeline import Pipeline
from sksurv.linear_model import CoxPHSurvivalAnalysis

from survival_model.config import TabularParams
from survival_model.errors import ConfigError
from survival_model.evaluation import baselines as baselines_module
from survival_model.evaluation.baselines import (
    Baseline,
    FittedBaseline,
    baselines,
    cross_validated_risk,
    ds_gpa,
    fit_baseline,
    gpa,
    inner_folds,
)
from survival_model.fingerprint import content_order
from survival_model.metrics import harrell_c
from survival_model.models.tabular import feature_names

from .cohorts import clinical_cohort


def test_gpa_follows_sperduto_2008_and_counts_missing_components() -> None:
    frame = pd.DataFrame({
        "age": [45, 55, 70, np.nan], "kps": [90, 80, 60, 100], "extracranial": [False, True, True, None],
        "n_brain_mets": [1, 3, 5, 2],
    })
    scores, missing = gpa(frame)
    assert list(scores) == [4.0, 1.5, 0.0, 0.5 + 1.0 + 0.5 + 0.5]
    assert missing == 1
    with pytest.raises(ConfigError, match="GPA needs"):
        gpa(frame.drop(columns=["kps"]))


def test_gpa_reads_nullable_columns_as_the_feature_table_stores_them() -> None:
    frame = pd.DataFrame({"age": pd.array([45, None], dtype="Int64"), "kps": pd.array([90, 70], dtype="Int64"),
                          "extracranial": pd.array([False, True], dtype="boolean"),
                          "n_brain_mets": pd.array([1, 2], dtype="Int64")})
    scores, missing = gpa(frame)
    assert list(scores) == [4.0, 0.5 + 0.5 + 0.0 + 0.5] and missing == 1


def _patients(*rows: dict[str, object]) -> pd.DataFrame:
    """Rows in the canonical clinical dtypes (absent keys are missing values)."""
    frame = pd.DataFrame(list(rows))
    dtypes = {"primary": "string", "age": "Float64", "kps": "Float64", "extracranial": "boolean",
              "n_brain_mets": "Int64", "her2_positive": "boolean", "hr_positive": "boolean"}
    return frame.astype({c: t for c, t in dtypes.items() if c in frame.columns})


def test_ds_gpa_follows_sperduto_2012_per_diagnosis() -> None:
    breast = {"primary": "breast", "age": 50, "kps": 60}
    frame = _patients(
        {"primary": "lung", "age": 55, "kps": 80, "extracranial": False, "n_brain_mets": 2},  # .5 + .5 + 1 + .5
        {**breast, "hr_positive": False, "her2_positive": False},  # basal: .5 + 0 + .5
        {**breast, "hr_positive": True, "her2_positive": False},  # luminal A: .5 + 1 + .5
        {**breast, "hr_positive": False, "her2_positive": True},  # HER2: .5 + 1.5 + .5
        {**breast, "hr_positive": True, "her2_positive": True},  # luminal B: .5 + 2 + .5
        {"primary": "breast", "age": 65, "kps": 90, "hr_positive": True, "her2_positive": True},  # 1.5 + 2 + 0
        {"primary": "breast", "age": 40, "kps": 50, "hr_positive": True, "her2_positive": False},  # 0 + 1 + .5
        {"primary": "melanoma", "age": 80, "kps": 90, "extracranial": True, "n_brain_mets": 1},  # 2 + 2
        {"primary": "renal", "age": 40, "kps": 70, "extracranial": False, "n_brain_mets": 4},  # 1 + 0
        *({"primary": "gi", "age": 70, "kps": kps, "extracranial": True, "n_brain_mets": 5}
          for kps in (60, 70, 80, 90, 100)),  # KPS < 70: 0, 70: 1, 80: 2, 90: 3, 100: 4
    )
    scores, missing = ds_gpa(frame)
    assert list(scores) == [2.5, 1.0, 2.0, 2.5, 3.0, 3.5, 1.5, 4.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    assert missing == 0


def test_ds_gpa_falls_back_to_the_gpa_for_other_or_unknown_primaries() -> None:
    rng = np.random.default_rng(7)
    frame = _patients(*({"primary": p, "age": float(rng.integers(30, 85)), "kps": float(rng.choice([50, 70, 80, 90])),
                         "extracranial": bool(rng.integers(2)), "n_brain_mets": int(rng.integers(1, 8))}
                        for p in ["other", None] * 10))
    assert frame["primary"].isna().sum() == 10
    np.testing.assert_array_equal(ds_gpa(frame)[0], gpa(frame)[0])
    assert ds_gpa(_patients({"primary": "other", "age": 45, "kps": 60, "extracranial": True,
                             "n_brain_mets": 5}))[0].tolist() == [1.0]


def test_ds_gpa_counts_missing_components_at_the_middle_of_their_range() -> None:
    frame = _patients(
        {"primary": "melanoma", "kps": None, "n_brain_mets": 2},  # 1 (unknown, 0-2) + 1
        {"primary": "breast", "age": 40, "kps": 90, "hr_positive": True},  # 1.5 + 1 (subtype unknown, 0-2) + .5
        {"primary": "breast", "kps": 75, "hr_positive": False, "her2_positive": False},  # 1 + 0 + .25 (age unknown)
        {"primary": "gi", "age": 70},  # 2 (KPS unknown, 0-4)
        {"primary": "lung", "kps": 90, "extracranial": True, "n_brain_mets": 1},  # .5 (age unknown) + 1 + 0 + 1
        {"primary": "renal", "kps": 100, "n_brain_mets": 1},  # age, extracranial unused: 4, not counted
    )
    scores, missing = ds_gpa(frame)
    assert list(scores) == [2.0, 3.0, 1.25, 2.0, 2.5, 4.0]
    assert missing == 5
    # a component column absent altogether counts as missing for the rows whose diagnosis uses it
    scores, missing = ds_gpa(frame.drop(columns=["her2_positive"]))
    assert list(scores) == [2.0, 3.0, 2.25, 2.0, 2.5, 4.0] and missing == 5
    with pytest.raises(ConfigError, match="DS-GPA needs column 'primary'"):
        ds_gpa(frame.drop(columns=["primary"]))


def test_the_ds_gpa_baseline_scores_minus_the_ds_gpa_and_fits_nothing() -> None:
    rng = np.random.default_rng(11)
    n = 40
    frame = pd.DataFrame({
        "primary": pd.array(rng.choice(["lung", "breast", "melanoma", "gi", "renal", "other"], n), dtype="string"),
        "age": pd.array(rng.integers(30, 85, n), dtype="Float64"),
        "kps": pd.array(rng.choice([50, 60, 70, 80, 90, 100], n), dtype="Float64"),
        "extracranial": pd.array(rng.integers(0, 2, n).astype(bool), dtype="boolean"),
        "n_brain_mets": pd.array(rng.integers(1, 8, n), dtype="Int64"),
        "her2_positive": pd.array(rng.integers(0, 2, n).astype(bool), dtype="boolean"),
        "hr_positive": pd.array(rng.integers(0, 2, n).astype(bool), dtype="boolean"),
        "time_days": rng.exponential(300, n), "event": rng.integers(0, 2, n),
    })
    frame.loc[::7, "kps"] = pd.NA
    frame.loc[::5, "primary"] = pd.NA
    available = baselines(["age", "kps", "primary"])
    assert available["ds_gpa"].description == "diagnosis-specific GPA (Sperduto 2012), risk = -DS-GPA"
    fitted = fit_baseline(available["ds_gpa"], frame.iloc[:30], seed=3)
    assert fitted.pipeline is None
    np.testing.assert_array_equal(fitted.risk(frame.iloc[30:]), -ds_gpa(frame.iloc[30:])[0])
    np.testing.assert_array_equal(fit_baseline(available["gpa"], frame).risk(frame), -gpa(frame)[0])


CLINICAL = ["age", "kps", "extracranial", "n_brain_mets", "sex"]


def test_cross_validated_risk_puts_every_fold_on_one_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Cox model is defined up to a constant: a fold model whose risks are all shifted (as another fit of
    the same model could be) changes neither the pooled out-of-fold risks nor their C-index."""
    frame, _ = clinical_cohort(80, 3)
    cox = baselines(CLINICAL)["cox_clinical"]
    plain = cross_validated_risk(cox, frame, folds=5, repeats=2, seed=1)
    fit = baselines_module.fit_baseline
    calls = {"n": 0}

    def shifted_fit(baseline: Baseline, train: pd.DataFrame, seed: int = 0) -> FittedBaseline:
        calls["n"] += 1
        fitted = fit(baseline, train, seed)
        return _Shifted(fitted.baseline, fitted.pipeline) if calls["n"] in (2, 7) else fitted

    monkeypatch.setattr(baselines_module, "fit_baseline", shifted_fit)
    shifted = cross_validated_risk(cox, frame, folds=5, repeats=2, seed=1)
    assert calls["n"] == 10
    np.testing.assert_allclose(shifted, plain, atol=1e-9)
    assert harrell_c(shifted, frame["time_days"], frame["event"]) == harrell_c(plain, frame["time_days"],
                                                                               frame["event"])
    # a score by hand (absolute scale, nothing fitted) is pooled as it is
    np.testing.assert_array_equal(cross_validated_risk(baselines(CLINICAL)["gpa"], frame), -gpa(frame)[0])


class _Shifted(FittedBaseline):
    """The same fitted model with every risk raised by a constant."""

    def risk(self, frame: pd.DataFrame) -> np.ndarray:
        return super().risk(frame) + 7.0


def test_cross_validated_risk_depends_on_the_data_not_the_row_order_or_the_keyed_ids() -> None:
    frame, _ = clinical_cohort(80, 4)
    cox = baselines(CLINICAL)["cox_clinical"]
    risk = cross_validated_risk(cox, frame, folds=5, seed=2)
    order = np.random.default_rng(0).permutation(len(frame))
    other = frame.iloc[order].reset_index(drop=True)  # rows shuffled, case ids from another key
    other["case_id"] = [hashlib.sha256(f"another key {i}".encode()).hexdigest()[:12] for i in range(len(other))]
    np.testing.assert_allclose(cross_validated_risk(cox, other, folds=5, seed=2), risk[order], atol=1e-9)
    by_id = other.sort_values("case_id")  # rows sorted by the keyed case ids (index: position in ``other``)
    np.testing.assert_allclose(cross_validated_risk(cox, by_id, folds=5, seed=2), risk[order][by_id.index],
                               atol=1e-9)


def test_fitted_baselines_read_only_the_columns_they_name() -> None:
    """``TabularParams``' default adds the GPA as a feature: not to a baseline defined by its columns."""
    frame, _ = clinical_cohort(60, 5)
    available = baselines(CLINICAL)
    fitted = fit_baseline(available["cox_clinical"], frame)
    assert fitted.pipeline is not None
    names = feature_names(fitted.pipeline.named_steps["tabular"])
    assert names and not [n for n in names if "score" in n]
    for name in ("cox_clinical", "coxnet_clinical_volumetric", "rsf"):
        tabular = available[name].tabular
        assert tabular is not None and tabular.scores == [], name
    # the real-data benchmark's "Cox: age, sex, primary" without KPS, extracranial disease or metastasis count
    spec = importlib.util.spec_from_file_location(
        "realdata_baselines", Path(__file__).resolve().parents[2] / "benchmarks" / "realdata_baselines.py")
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    sheet = frame[["case_id", "age", "sex", "time_days", "event"]].assign(
        primary=np.where(np.arange(len(frame)) % 2, "lung", "breast"))
    cox = fit_baseline(benchmark.cox("cox_clinical", ["age", "sex", "primary"], False), sheet)
    assert cox.pipeline is not None
    assert not [n for n in feature_names(cox.pipeline.named_steps["tabular"]) if "score" in n]


def _few_deaths(n: int, deaths: int, seed: int) -> pd.DataFrame:
    frame, _ = clinical_cohort(n, seed)
    frame["event"] = 0
    frame.loc[frame["time_days"].nsmallest(deaths).index, "event"] = 1
    return frame


def test_the_penalty_is_chosen_on_inner_folds_that_all_have_deaths() -> None:
    frame = _few_deaths(18, 3, 0)
    ordered = frame.iloc[content_order(frame.to_dict("records"))].reset_index(drop=True)
    events = ordered["event"].to_numpy()
    # unstratified folds of these rows (in the order the baseline splits them) would leave one without deaths
    assert min(int(events[t].sum()) for _, t in KFold(3, shuffle=True, random_state=0).split(ordered)) == 0
    coxnet = baselines(CLINICAL)["coxnet_clinical_volumetric"]
    fitted = fit_baseline(coxnet, frame, seed=0)
    search = fitted.pipeline
    folds = list(check_cv(search.cv).split(ordered, events))
    assert len(folds) == 3 and all(events[test].sum() >= 1 for _, test in folds)
    scores = np.column_stack([search.cv_results_[f"split{k}_test_score"] for k in range(3)])
    assert np.isfinite(scores).all()
    # the same folds whatever the rows' input order or keyed ids
    other = frame.iloc[::-1].assign(case_id=[f"z{i}" for i in range(len(frame))])
    again = fit_baseline(coxnet, other, seed=0).pipeline
    assert [t.tolist() for _, t in check_cv(again.cv).split(ordered)] == [t.tolist() for _, t in folds]
    two = fit_baseline(coxnet, _few_deaths(18, 2, 0), seed=0).pipeline  # as many inner folds as deaths
    assert two.n_splits_ == 2 and np.isfinite(two.cv_results_["mean_test_score"]).any()
    with pytest.raises(ConfigError, match="at least 2 deaths"):
        inner_folds(np.array([1, 0, 0, 0]), seed=0)


def test_a_baseline_with_one_death_uses_its_grids_first_setting_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    coxnet = baselines(CLINICAL)["coxnet_clinical_volumetric"]
    with caplog.at_level("WARNING"):
        fitted = fit_baseline(coxnet, _few_deaths(18, 1, 0), seed=0)
    assert fitted.pipeline.get_params()["model__alphas"] == coxnet.grid["alphas"][0]  # type: ignore[index, union-attr]
    assert "too few to choose its settings" in caplog.text and "first setting" in caplog.text


class _FailsOnTen(CoxPHSurvivalAnalysis):  # type: ignore[misc]
    """Cox PH whose fit fails on exactly 10 training rows (one inner fold of 16 rows)."""

    def fit(self, X: Any, y: Any) -> _FailsOnTen:
        if len(X) == 10:
            raise ArithmeticError("diverged")
        return super().fit(X, y)  # type: ignore[no-any-return]


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite:UserWarning")
def test_a_setting_that_cannot_be_fitted_is_left_out_and_counted_not_scored_one_half(
        caplog: pytest.LogCaptureFixture) -> None:
    frame = _few_deaths(24, 10, 1)
    params = TabularParams(clinical=CLINICAL, volumetric=False, scores=[])
    broken = Baseline("cox_grid", "Cox PH, ridge by CV", params, lambda seed: CoxPHSurvivalAnalysis(),
                      {"alpha": [0.1, -1.0]})  # a negative penalty cannot be fitted
    with caplog.at_level(logging.WARNING, logger=baselines_module.__name__), pytest.warns(FitFailedWarning):
        search = fit_baseline(broken, frame).pipeline
    assert search.best_params_ == {"model__alpha": 0.1}
    assert np.isnan(search.cv_results_["mean_test_score"][1])
    assert "3 of 6 inner-fold fits could not be fitted or scored" in caplog.text
    # every setting failing in some fold: nothing to choose from, the grid's first setting, said
    failing = Baseline("cox_fails", "Cox PH failing on one fold", params, lambda seed: _FailsOnTen(),
                       {"alpha": [0.1, 0.3]})
    with pytest.warns(FitFailedWarning):
        fallback = fit_baseline(failing, _few_deaths(16, 8, 2))
    assert isinstance(fallback.pipeline, Pipeline) and fallback.pipeline.get_params()["model__alpha"] == 0.1
    assert "no setting of its grid could be fitted and scored in every inner fold" in caplog.text


def test_the_forest_gives_the_same_bits_on_every_prediction() -> None:
    """Its trees' hazards are summed in one order (several threads added them in whatever order they finished,
    which changed the risks' last bits on every call, and with them every score's)."""
    frame, _ = clinical_cohort(300, 7)
    fitted = fit_baseline(baselines(CLINICAL)["rsf"], frame, seed=1)
    risks = {fitted.risk(frame).tobytes() for _ in range(6)}
    assert len(risks) == 1
