"""Clinical baselines: the GPA by hand, fitted Cox / elastic-net Cox / random survival forest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from survival_model.errors import ConfigError
from survival_model.evaluation.baselines import baselines, fit_baseline, gpa
from survival_model.evaluation.metrics import harrell_c


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


def cohort(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "case_id": [f"c{seed}-{i}" for i in range(n)], "site": rng.choice(["site_a", "site_b"], n),
        "age": rng.normal(62, 10, n).round(), "kps": rng.choice([60, 70, 80, 90, 100], n),
        "extracranial": rng.random(n) < 0.5, "n_brain_mets": rng.integers(1, 8, n),
        "sex": rng.choice(["female", "male"], n), "vol_et_mm3": rng.lognormal(8, 1, n),
        **{f"rad_f{i}": rng.standard_normal(n) for i in range(25)},
    })
    lp = -0.04 * (frame["kps"] - 80) + 0.5 * np.log(frame["vol_et_mm3"] / 3000) + 0.4 * frame["extracranial"]
    event_time = rng.exponential(300 * np.exp(-lp)) + 1
    censor = rng.uniform(100, 1200, n)
    frame["time_days"], frame["event"] = np.minimum(event_time, censor), (event_time <= censor).astype(int)
    return frame


@pytest.mark.parametrize("name", ["gpa", "cox_clinical", "coxnet_clinical_volumetric", "rsf"])
def test_each_baseline_ranks_held_out_patients_better_than_chance(name: str) -> None:
    train, test = cohort(240, 1), cohort(120, 2)
    clinical = ["age", "kps", "extracranial", "n_brain_mets", "sex"]
    fitted = fit_baseline(baselines(clinical)[name], train, seed=3)
    risk = fitted.risk(test)
    assert risk.shape == (120,) and np.isfinite(risk).all()
    # the GPA sees KPS and extracranial disease coarsely, not the tumour volume the outcome depends on
    assert harrell_c(risk, test["time_days"], test["event"]) > (0.55 if name == "gpa" else 0.6)


def test_gpa_reads_nullable_columns_as_the_feature_table_stores_them() -> None:
    frame = pd.DataFrame({"age": pd.array([45, None], dtype="Int64"), "kps": pd.array([90, 70], dtype="Int64"),
                          "extracranial": pd.array([False, True], dtype="boolean"),
                          "n_brain_mets": pd.array([1, 2], dtype="Int64")})
    scores, missing = gpa(frame)
    assert list(scores) == [4.0, 0.5 + 0.5 + 0.0 + 0.5] and missing == 1
