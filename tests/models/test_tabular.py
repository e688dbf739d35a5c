"""The tabular pipeline: fitted on training rows only, encodings, radiomics ranking, no outcome leak."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from survival_model.config import TabularParams
from survival_model.models.tabular import build_tabular_pipeline, feature_names, fit_transform_fold, survival_target


def table(n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kps = rng.choice([60.0, 70.0, 80.0, 90.0, 100.0], n)
    time = rng.exponential(300.0 * (kps / 80.0) ** 3) + 1
    frame = pd.DataFrame({
        "site": pd.array(rng.choice(["site_a", "site_b"], n), dtype="string"),
        "case_id": [f"c{i:03d}" for i in range(n)],
        "age": pd.array(rng.normal(62, 9, n).round(1), dtype="Float64"),
        "sex": pd.array(rng.choice(["female", "male"], n), dtype="string"),
        "kps": pd.array(kps, dtype="Float64"),
        "primary": pd.array(rng.choice(["lung", "breast", "melanoma"], n), dtype="string"),
        "extracranial": pd.array(rng.random(n) < 0.5, dtype="boolean"),
        "time_days": pd.array(time.round(), dtype="Float64"),
        "event": pd.array((rng.random(n) < 0.75).astype(int), dtype="Int64"),
        "vol_wt_mm3": rng.lognormal(9, 1, n),
        "vol_et_mm3": rng.lognormal(8, 1, n),
        "rad_wt_t1c_noise": rng.normal(size=n),
        "rad_wt_t1c_signal": -np.log(time) + rng.normal(0, 0.3, n),  # predictive of survival
        "rad_et_t1c_other": rng.normal(size=n),
    })
    frame.loc[frame.index[:5], "age"] = pd.NA
    frame.loc[frame.index[5:8], "extracranial"] = pd.NA
    return frame


CLINICAL = ["age", "sex", "kps", "primary", "extracranial"]


def test_the_pipeline_is_fitted_on_the_training_rows_only() -> None:
    frame = table()
    train, validation = frame.iloc[:60].copy(), frame.iloc[60:].copy()
    validation["age"] = 1000.0  # wildly different: a pipeline that saw these rows would shift its scaling
    validation["primary"] = "renal"  # a category training never saw
    pipeline, (x_train, x_val) = fit_transform_fold(TabularParams(clinical=CLINICAL, scores=[]), train, [validation])
    scaler = pipeline.named_steps["encode"].named_transformers_["numbers"].named_steps["standardscaler"]
    names = feature_names(pipeline)
    age = names.index("numbers__age")
    train_age = train["age"].astype(float)
    imputed_train = train_age.fillna(train_age.median())
    assert scaler.mean_[age] == pytest.approx(imputed_train.mean())
    assert np.allclose(x_train.mean(axis=0)[: scaler.mean_.size], 0, atol=1e-6)
    assert x_val[:, age].min() > 50  # validation ages are far outside the training scale
    primary = [i for i, n in enumerate(names) if n.startswith("categories__primary_")]
    assert x_val[:, primary].sum() == 0  # the unseen category is all zeros
    assert x_train.dtype == np.float32 and x_val.shape[1] == x_train.shape[1]


def test_encodings_booleans_missing_values_and_no_outcome_or_identifier_columns() -> None:
    frame = table()
    pipeline, (x,) = fit_transform_fold(TabularParams(clinical=CLINICAL, scores=[]), frame)
    names = feature_names(pipeline)
    assert "numbers__extracranial" in names and "numbers__missingindicator_age" in names
    assert {"categories__sex_female", "categories__sex_male"} <= set(names)
    assert {"numbers__vol_wt_mm3", "numbers__vol_et_mm3"} <= set(names)
    assert not any(n.split("__")[1].startswith(("time", "event", "case_id", "site", "rad_")) for n in names)
    assert np.isfinite(x).all()


def test_radiomics_are_ranked_on_the_training_rows_by_concordance() -> None:
    frame = table(200, seed=1)
    params = TabularParams(clinical=CLINICAL, radiomics_k=1, scores=[])
    pipeline, _ = fit_transform_fold(params, frame.iloc[:150], [frame.iloc[150:]])
    selector = pipeline.named_steps["radiomics"]
    assert selector.selected_ == ["rad_wt_t1c_signal"]
    assert set(selector.dropped_) == {"rad_wt_t1c_noise", "rad_et_t1c_other"}
    assert "numbers__rad_wt_t1c_signal" in feature_names(pipeline)
    # a column predictive only in rows the pipeline does not see is never chosen
    shuffled = frame.copy()
    shuffled.loc[shuffled.index[:150], "rad_wt_t1c_signal"] = np.random.default_rng(2).normal(size=150)
    pipeline, _ = fit_transform_fold(params, shuffled.iloc[:150], [shuffled.iloc[150:]])
    assert pipeline.named_steps["radiomics"].selected_ != ["rad_wt_t1c_signal"]


def test_site_harmonisation_runs_inside_the_fold_and_outcomes_are_refused_as_inputs() -> None:
    frame = table(120, seed=3)
    frame.loc[frame["site"] == "site_b", "vol_wt_mm3"] *= 3.0  # a site effect
    pipeline, (x_train, x_test) = fit_transform_fold(TabularParams(clinical=CLINICAL, harmonise=True, scores=[]),
                                                     frame.iloc[:90], [frame.iloc[90:]])
    assert pipeline.named_steps["harmonise"].__class__.__name__ == "SiteHarmoniser"
    assert x_test.shape[1] == x_train.shape[1]
    with pytest.raises(ValueError, match="look like survival outcomes"):
        leaky = TabularParams(clinical=["age", "time_days"], scores=[])
        build_tabular_pipeline(leaky).fit(frame, survival_target(frame))
    with pytest.raises(ValueError, match=r"clinical field\(s\) \['gpa'\] are not in the feature table"):
        build_tabular_pipeline(TabularParams(clinical=["gpa"], scores=[])).fit(frame, survival_target(frame))


def test_a_column_some_site_or_every_training_patient_lacks() -> None:
    """A sequence site A does not acquire (NaN for its patients) is imputed, with its missing-value indicator;
    one no training patient has stays missing (a constant 0) even for a patient that has it."""
    frame = table()
    site_a = (frame["site"] == "site_a").to_numpy()
    frame["int_wt_t2f_mean"] = np.where(site_a, np.nan, np.random.default_rng(1).normal(size=len(frame)))
    frame["int_wt_t2w_mean"] = np.nan
    train, validation = frame.iloc[:60].copy(), frame.iloc[60:].copy()
    params = TabularParams(clinical=CLINICAL, scores=[], intensity=True)
    pipeline, (x_train, x_val) = fit_transform_fold(params, train, [validation])
    names = feature_names(pipeline)
    assert np.isfinite(x_train).all() and np.isfinite(x_val).all() and x_val.shape[1] == x_train.shape[1]
    indicator = x_train[:, names.index("numbers__missingindicator_int_wt_t2f_mean")]
    assert len(set(indicator[site_a[:60]])) == 1 and len(set(indicator[~site_a[:60]])) == 1
    assert indicator[site_a[:60]][0] != indicator[~site_a[:60]][0]  # the indicator is the site without FLAIR
    empty = [i for i, n in enumerate(names) if "int_wt_t2w_mean" in n]
    assert empty and not x_train[:, empty].any() and not x_val[:, empty].any()
    validation["int_wt_t2w_mean"] = 5.0  # a new patient that has T2: the model learned nothing for it
    np.testing.assert_array_equal(np.asarray(pipeline.transform(validation), dtype=np.float32), x_val)
