"""Patient-level splits: locked test set, stratified folds, leave-one-site-out, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import SplitParams
from survival_model.training.splits import SplitError, Splits, make_splits, strata_labels, time_bands


def cohort(n: int = 150, seed: int = 0, sites: tuple[str, ...] = ("site_a", "site_b", "site_c")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    site = rng.choice(sites, size=n, p=np.linspace(2, 1, len(sites)) / np.linspace(2, 1, len(sites)).sum())
    event = (rng.random(n) < 0.7).astype(int)
    return pd.DataFrame({"case_id": [f"{s}-{i:04d}" for i, s in enumerate(site)], "site": site,
                         "time_days": rng.gamma(2.0, 200.0, n).round() + 1, "event": event,
                         "age": rng.normal(60, 10, n)})


def test_no_patient_is_in_two_sets_and_the_test_set_is_locked_first() -> None:
    patients = cohort()
    splits = make_splits(patients, SplitParams())
    assert len(splits.test) == 30 and len(splits.development) == 120
    assert set(splits.test) | set(splits.development) == set(patients["case_id"])
    assert len(splits.folds) == 5
    validations = [set(f.validation) for f in splits.folds]
    assert set().union(*validations) == set(splits.development)  # each development patient validates once
    assert sum(len(v) for v in validations) == len(splits.development)
    for fold in splits.folds:
        assert not set(fold.train) & set(splits.test) and not set(fold.validation) & set(splits.test)
    # more folds or another scheme never moves a patient into or out of the test set
    assert make_splits(patients, SplitParams(folds=3)).test == splits.test
    assert make_splits(patients, SplitParams(scheme="leave_one_site_out")).test == splits.test


def test_sets_are_stratified_by_event_site_and_time_band() -> None:
    patients = cohort(300, seed=1)
    splits = make_splits(patients, SplitParams())
    summary = splits.summary(patients)
    overall_rate = patients["event"].mean()
    rows = summary[summary["site"] == "all"].set_index("set")
    assert abs(rows.loc["test", "event_rate"] - overall_rate) < 0.03
    for fold in splits.folds:
        assert abs(rows.loc[f"{fold.name}/validation", "event_rate"] - overall_rate) < 0.05
    site_share = patients["site"].value_counts(normalize=True)
    test_share = patients.set_index("case_id").loc[list(splits.test), "site"].value_counts(normalize=True)
    assert np.allclose(test_share.sort_index(), site_share.sort_index(), atol=0.03)
    bands = time_bands(patients["time_days"], 3)
    test_bands = bands[patients["case_id"].isin(splits.test)].value_counts(normalize=True).sort_index()
    assert np.allclose(test_bands, 1 / 3, atol=0.05)


def test_the_same_patients_and_seed_give_the_same_splits_whatever_the_row_order() -> None:
    patients = cohort()
    first = make_splits(patients, SplitParams())
    shuffled = make_splits(patients.sample(frac=1.0, random_state=3), SplitParams())
    assert shuffled == first
    other = make_splits(patients, SplitParams(seed=7))
    assert other.test != first.test and other.fingerprint != first.fingerprint


def test_splits_survive_a_json_round_trip(tmp_path: Path) -> None:
    splits = make_splits(cohort(), SplitParams())
    path = splits.save(tmp_path / "splits.json")
    assert Splits.load(path) == splits
    text = path.read_text()
    assert splits.test[0] in text and splits.development[-1] in text  # by case id, nothing else
    assert "age" not in text and "time_days" not in text


def test_a_tampered_splits_file_is_refused(tmp_path: Path) -> None:
    splits = make_splits(cohort(), SplitParams())
    data = splits.to_json()
    data["folds"][0]["train"].append(data["test"][0])
    with pytest.raises(SplitError, match="fold-1: a patient is in two of train, validation and test"):
        Splits.from_json(data)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SplitError, match="cannot read the splits file"):
        Splits.load(tmp_path / "bad.json")


def test_leave_one_site_out_validates_each_site_on_a_model_fitted_on_the_others() -> None:
    patients = cohort()
    splits = make_splits(patients, SplitParams(scheme="leave_one_site_out"))
    site_of = patients.set_index("case_id")["site"]
    assert [f.name for f in splits.folds] == ["site-site_a", "site-site_b", "site-site_c"]
    for fold in splits.folds:
        site = fold.name.removeprefix("site-")
        assert set(site_of[list(fold.validation)]) == {site}
        assert site not in set(site_of[list(fold.train)])
    with pytest.raises(SplitError, match="at least two sites"):
        make_splits(cohort(sites=("site_a",)), SplitParams(scheme="leave_one_site_out"))


def test_a_small_site_is_merged_into_coarser_strata_instead_of_failing() -> None:
    patients = cohort(120, seed=2)
    patients.loc[patients.index[:4], "site"] = "tiny"  # four patients: too few for site x event x band
    splits = make_splits(patients, SplitParams())
    assert sum(splits.strata["test_depths"].values()) == len(patients)
    tiny = set(patients.loc[patients["site"] == "tiny", "case_id"])
    assert tiny <= set(splits.test) | set(splits.development)
    assert set(splits.test) | set(splits.development) == set(patients["case_id"])
    # a lone site-c death joins the largest stratum of deaths, keeping the event stratification
    labels, depths = strata_labels(pd.DataFrame({"event": [0, 0, 1, 1, 1], "site": list("aabbc")}), 2)
    assert labels.tolist() == ["event=0|site=a"] * 2 + ["event=1|site=b"] * 3 and depths == {"2": 5}
    # no sibling big enough: up to the parent stratum
    labels, depths = strata_labels(pd.DataFrame({"event": [0, 0, 1, 1], "site": list("aabc")}), 2)
    assert labels.tolist() == ["event=0|site=a"] * 2 + ["event=1"] * 2 and depths == {"1": 2, "2": 2}
    # at most max_classes strata
    labels, _ = strata_labels(pd.DataFrame({"event": [0, 1] * 6, "site": list("aabbcc") * 2}), 2, max_classes=2)
    assert labels.nunique() <= 2


def test_bad_input_is_refused_with_a_reason() -> None:
    with pytest.raises(SplitError, match="too few"):
        make_splits(cohort(9), SplitParams())
    with pytest.raises(SplitError, match="lacks column"):
        make_splits(cohort().drop(columns=["event"]), SplitParams())
    duplicated = cohort()
    duplicated.loc[1, "case_id"] = duplicated.loc[0, "case_id"]
    with pytest.raises(SplitError, match="unique"):
        make_splits(duplicated, SplitParams())
    missing = cohort()
    missing.loc[3, "time_days"] = np.nan
    with pytest.raises(SplitError, match="time_days and event"):
        make_splits(missing, SplitParams())
