"""Clinical baselines: the GPA by hand, fitted Cox / elastic-net Cox / random survival forest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from survival_model.errors import ConfigError
from survival_model.evaluation.baselines import gpa


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
