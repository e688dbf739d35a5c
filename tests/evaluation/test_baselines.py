"""Clinical baselines: the GPA and DS-GPA by hand, fitted Cox / elastic-net Cox / random survival forest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from survival_model.errors import ConfigError
from survival_model.evaluation.baselines import baselines, ds_gpa, fit_baseline, gpa


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
