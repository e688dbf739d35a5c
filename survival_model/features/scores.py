"""Published clinical prognostic scores for brain metastases, computed per row from the canonical clinical fields.

- :func:`gpa`: the Graded Prognostic Assessment (Sperduto et al. 2008);
- :func:`ds_gpa`: the diagnosis-specific GPA (Sperduto et al. 2012).

Both are 0-4, higher = better prognosis; a missing component counts the middle of its range and the rows
affected are counted. They serve as clinical baselines (``survival_model.evaluation.baselines``) and as
tabular features (``survival_model.models.tabular``, ``TabularParams.scores``). Nothing here is fitted.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from survival_model.errors import ConfigError

GPA_FIELDS = ("age", "kps", "extracranial", "n_brain_mets")
DIAGNOSES = ("lung", "breast", "melanoma", "gi", "renal")  # the DS-GPA's own scales; others use the GPA

Item = tuple[npt.ArrayLike, "pd.Series[bool]", float]  # points, unknown, the item's maximum (its minimum is 0)


def _number(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as float with NaN (nullable Int64/Float64 included); all NaN where the column is absent."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    values = pd.to_numeric(frame[column], errors="coerce")
    return pd.Series(values.to_numpy(dtype=float, na_value=np.nan), index=frame.index)


def _flag(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as nullable boolean; all missing where the column is absent."""
    if column not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="boolean")
    return frame[column].astype("boolean")


def _total(items: list[Item]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """The sum of the items' points, an unknown item counting the middle of its range, and which rows had one."""
    score, unknown = np.zeros(len(items[0][1])), np.zeros(len(items[0][1]), dtype=bool)
    for points, missing, top in items:
        flags = missing.to_numpy(dtype=bool)
        score += np.where(flags, top / 2, np.asarray(points, dtype=float))
        unknown |= flags
    return score, unknown


def _gpa_items(frame: pd.DataFrame) -> list[Item]:
    age, kps, mets = _number(frame, "age"), _number(frame, "kps"), _number(frame, "n_brain_mets")
    ecm = _flag(frame, "extracranial")
    return [(np.select([age < 50, age <= 60], [1.0, 0.5], 0.0), age.isna(), 1.0),
            (np.select([kps >= 90, kps >= 70], [1.0, 0.5], 0.0), kps.isna(), 1.0),
            (np.where(ecm.fillna(False).to_numpy(dtype=bool), 0.0, 1.0), ecm.isna(), 1.0),
            (np.select([mets == 1, mets <= 3], [1.0, 0.5], 0.0), mets.isna(), 1.0)]


def gpa(frame: pd.DataFrame) -> tuple[npt.NDArray[np.float64], int]:
    """The Sperduto 2008 GPA per row (0-4) and how many rows had a missing component (counted 0.5)."""
    missing = [c for c in GPA_FIELDS if c not in frame.columns]
    if missing:
        raise ConfigError(f"the GPA needs column(s) {missing}")
    score, unknown = _total(_gpa_items(frame))
    return score, int(unknown.sum())


def ds_gpa(frame: pd.DataFrame) -> tuple[npt.NDArray[np.float64], int]:
    """The diagnosis-specific GPA per row (0-4, higher = better) and how many rows had a missing component.

    Sperduto PW, Kased N, Roberge D, et al. Summary report on the graded prognostic assessment: an accurate
    and facile diagnosis-specific tool to estimate survival for patients with brain metastases.
    J Clin Oncol 2012;30(4):419-425, Table 2 (the DS-GPA worksheet), by ``primary``:

    - lung: the 2008 GPA (age > 60: 0, 50-60: 0.5, < 50: 1; KPS < 70: 0, 70-80: 0.5, 90-100: 1;
      extracranial metastases present: 0, absent: 1; brain metastases > 3: 0, 2-3: 0.5, 1: 1);
    - melanoma, renal: KPS < 70: 0, 70-80: 1, 90-100: 2; brain metastases > 3: 0, 2-3: 1, 1: 2;
    - breast: KPS <= 50: 0, 60: 0.5, 70-80: 1, 90-100: 1.5 (bands <= 50, < 70, < 90, >= 90); subtype
      basal / triple negative (HR- HER2-): 0, luminal A (HR+ HER2-): 1, HER2 (HR- HER2+): 1.5,
      luminal B (HR+ HER2+): 2, from ``hr_positive`` and ``her2_positive``; age >= 60: 0, < 60: 0.5;
    - gi: KPS < 70: 0, 70: 1, 80: 2, 90: 3, 100: 4 (bands of 10);
    - other or missing primary: the 2008 GPA.

    A missing component (a missing value, or a column absent from ``frame``) counts the middle of that
    item's range, e.g. 0.5 of a 0-1 item, 1 of the 0-2 subtype item; the count is of the rows where a
    component their diagnosis uses was missing. Raises ``ConfigError`` without a ``primary`` column.
    """
    if "primary" not in frame.columns:
        raise ConfigError("the DS-GPA needs column 'primary'")
    age, kps, mets = _number(frame, "age"), _number(frame, "kps"), _number(frame, "n_brain_mets")
    hr, her2 = _flag(frame, "hr_positive"), _flag(frame, "her2_positive")
    hr_pos, her2_pos = hr.fillna(False).to_numpy(dtype=bool), her2.fillna(False).to_numpy(dtype=bool)
    melanoma_renal: list[Item] = [(np.select([kps >= 90, kps >= 70], [2.0, 1.0], 0.0), kps.isna(), 2.0),
                                  (np.select([mets == 1, mets <= 3], [2.0, 1.0], 0.0), mets.isna(), 2.0)]
    scales: dict[str, list[Item]] = {
        "lung": _gpa_items(frame),
        "breast": [(np.select([kps >= 90, kps >= 70, kps > 50], [1.5, 1.0, 0.5], 0.0), kps.isna(), 1.5),
                   (np.select([hr_pos & her2_pos, her2_pos, hr_pos], [2.0, 1.5, 1.0], 0.0), hr.isna() | her2.isna(),
                    2.0),
                   (np.where(age < 60, 0.5, 0.0), age.isna(), 0.5)],
        "melanoma": melanoma_renal,
        "gi": [(np.select([kps >= 100, kps >= 90, kps >= 80, kps >= 70], [4.0, 3.0, 2.0, 1.0], 0.0), kps.isna(),
                4.0)],
        "renal": melanoma_renal,
    }
    primary = frame["primary"].astype("string").str.strip().str.lower()
    score, unknown = _total(_gpa_items(frame))  # other or missing primary
    for diagnosis in DIAGNOSES:
        rows = primary.eq(diagnosis).fillna(False).to_numpy(dtype=bool)
        points, missing = _total(scales[diagnosis])
        score, unknown = np.where(rows, points, score), np.where(rows, missing, unknown)
    return score, int(unknown.sum())


#: The scores by name (nothing fitted).
SCORES = {"gpa": gpa, "ds_gpa": ds_gpa}
#: The clinical fields each score reads where present (a missing value counts the middle of its item's range).
SCORE_INPUTS: dict[str, tuple[str, ...]] = {
    "gpa": GPA_FIELDS,
    "ds_gpa": ("primary", *GPA_FIELDS, "hr_positive", "her2_positive"),
}
#: The columns a score cannot be computed without.
SCORE_REQUIRED: dict[str, tuple[str, ...]] = {"gpa": GPA_FIELDS, "ds_gpa": ("primary",)}
