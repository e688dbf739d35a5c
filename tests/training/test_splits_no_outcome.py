"""Training refuses patients without a survival outcome (a site declaring no survival: patients to predict)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from survival_model.config import SplitParams
from survival_model.training.splits import SplitError, check_outcomes, make_splits


def patients(n_known: int = 40, n_new: int = 12, seed: int = 0) -> pd.DataFrame:
    """``n_known`` patients with outcomes at two sites and ``n_new`` without at ``new_site`` (nullable dtypes,
    as in the cohort)."""
    rng = np.random.default_rng(seed)
    known = pd.DataFrame({
        "case_id": [f"k-{i:03d}" for i in range(n_known)],
        "site": np.where(np.arange(n_known) % 2 == 0, "site_a", "site_b"),
        "time_days": rng.gamma(2.0, 200.0, n_known).round() + 1,
        "event": (rng.random(n_known) < 0.7).astype(int),
    })
    new = pd.DataFrame({"case_id": [f"n-{i:03d}" for i in range(n_new)], "site": "new_site",
                        "time_days": None, "event": None})
    frame = pd.concat([known, new], ignore_index=True)
    frame["source_digest"] = [f"images of {c}" for c in frame["case_id"]]
    return frame.astype({"site": "string", "case_id": "string", "time_days": "Float64", "event": "Int64"})


def test_make_splits_refuses_patients_without_outcome_naming_count_and_site() -> None:
    with pytest.raises(SplitError, match=r"^12 patient\(s\) have no survival outcome \(site\(s\) new_site: 12\): "
                                         r"they can be predicted, not trained on\. .*declare clinical\.survival"):
        make_splits(patients(), SplitParams())


def test_the_message_counts_every_site_with_missing_outcomes() -> None:
    frame = patients(n_new=3)
    frame.loc[0, "event"] = pd.NA  # one patient of site_a lacks its event
    with pytest.raises(SplitError, match=r"^4 patient\(s\) .*\(site\(s\) new_site: 3, site_a: 1\)"):
        check_outcomes(frame)


def test_patients_with_outcomes_in_nullable_dtypes_are_split() -> None:
    frame = patients(n_new=0)
    check_outcomes(frame)
    splits = make_splits(frame, SplitParams())
    assert len(splits.test) + len(splits.development) == 40
