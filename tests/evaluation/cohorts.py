"""Small simulated cohorts shared by the evaluation tests (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from survival_model.evaluation.scores import Outcome


def risk_cohort(n: int, seed: int) -> tuple[np.ndarray, Outcome]:
    """A true log-risk per patient and exponential survival with uniform censoring."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    event_time = rng.exponential(300 * np.exp(-x)) + 1
    censor = rng.uniform(100, 1500, n)
    return x, Outcome.of(np.minimum(event_time, censor), event_time <= censor)


def clinical_cohort(n: int, seed: int, sites: str = "ab") -> tuple[pd.DataFrame, pd.Series]:
    """Feature-table rows whose survival depends on KPS, extracranial disease and enhancing volume
    (plus 25 noise radiomics columns), and the true log-risk by case id."""
    rng = np.random.default_rng(seed)
    site = [f"site_{sites[i % len(sites)]}" for i in range(n)]
    frame = pd.DataFrame({
        "case_id": [f"{s}-{seed}-{i:04d}" for i, s in enumerate(site)], "site": site,
        "age": rng.normal(62, 10, n).round(), "kps": rng.choice([60, 70, 80, 90, 100], n),
        "extracranial": rng.random(n) < 0.5, "n_brain_mets": rng.integers(1, 8, n),
        "sex": rng.choice(["female", "male"], n), "vol_et_mm3": rng.lognormal(8, 1, n),
        **{f"rad_f{i}": rng.standard_normal(n) for i in range(25)},
    })
    lp = -0.04 * (frame["kps"] - 80) + 0.5 * np.log(frame["vol_et_mm3"] / 3000) + 0.4 * frame["extracranial"]
    event_time = rng.exponential(300 * np.exp(-lp)) + 1
    censor = rng.uniform(100, 1300, n)
    frame["time_days"], frame["event"] = np.minimum(event_time, censor), (event_time <= censor).astype(int)
    return frame, pd.Series(lp.to_numpy(), index=frame["case_id"])
