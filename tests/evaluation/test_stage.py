"""The comparison of a network with the baselines and the oracle on the same splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from survival_model.config import EvaluationParams, SplitParams
from survival_model.evaluation.metrics import harrell_c
from survival_model.evaluation.stage import compare, model_risks
from survival_model.training.splits import make_splits


def cohort(n: int = 160, seed: int = 5) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "case_id": [f"site_{'abc'[i % 3]}-{i:04d}" for i in range(n)],
        "site": [f"site_{'abc'[i % 3]}" for i in range(n)],
        "age": rng.normal(62, 10, n).round(), "kps": rng.choice([60, 70, 80, 90, 100], n),
        "extracranial": rng.random(n) < 0.5, "n_brain_mets": rng.integers(1, 8, n),
        "sex": rng.choice(["female", "male"], n), "vol_et_mm3": rng.lognormal(8, 1, n),
        **{f"rad_f{i}": rng.standard_normal(n) for i in range(22)},
    })
    lp = -0.04 * (frame["kps"] - 80) + 0.6 * np.log(frame["vol_et_mm3"] / 3000) + 0.4 * frame["extracranial"]
    event_time = rng.exponential(300 * np.exp(-lp)) + 1
    censor = rng.uniform(100, 1500, n)
    frame["time_days"], frame["event"] = np.minimum(event_time, censor), (event_time <= censor).astype(int)
    return frame, pd.Series(lp.to_numpy(), index=frame["case_id"])


def test_every_model_is_scored_on_the_same_test_patients_beside_the_oracle() -> None:
    table, oracle = cohort()
    splits = make_splits(table, SplitParams(folds=3))
    rng = np.random.default_rng(0)
    noisy = oracle + rng.normal(0, 0.5, len(oracle))  # a "network" that sees the truth through noise
    evaluation = EvaluationParams(score_resamples=20, baselines=["gpa", "cox_clinical", "rsf"])
    models, cv = model_risks(table, splits, noisy, noisy, ["age", "kps", "extracranial", "n_brain_mets", "sex"],
                             evaluation, oracle)
    assert list(models) == ["network", "gpa", "cox_clinical", "rsf", "oracle"]
    assert set(cv) == {"gpa", "cox_clinical", "rsf"} and all(0 < v["mean"] < 1 for v in cv.values())
    comparison, per_site = compare(table, splits, models, evaluation)
    assert list(comparison.index) == list(models)
    c = comparison["harrell_c"]
    test = table.set_index("case_id").loc[list(splits.test)]
    assert c["oracle"] == harrell_c(oracle.loc[list(splits.test)], test["time_days"], test["event"])
    assert c["oracle"] > 0.65 and c["network"] > 0.65
    assert comparison.loc["network", "delta_harrell_c"] > 0 and np.isnan(comparison.loc["gpa", "delta_harrell_c"])
    assert set(per_site.columns) == {"site_a", "site_b", "site_c"} and list(per_site.index) == list(models)
