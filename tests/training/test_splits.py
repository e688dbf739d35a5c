"""Patient-level splits: locked test set by the per-patient digest rule, stratified folds,
leave-one-site-out, persistence; the same splits whatever the pseudonymisation key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import SplitParams
from survival_model.fingerprint import sha256_bytes
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.training.splits import (
    SPLIT_RULE,
    SplitError,
    Splits,
    in_test_set,
    make_splits,
    strata_labels,
    with_source_digests,
)


def cohort(n: int = 150, seed: int = 0, sites: tuple[str, ...] = ("site_a", "site_b", "site_c")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    site = rng.choice(sites, size=n, p=np.linspace(2, 1, len(sites)) / np.linspace(2, 1, len(sites)).sum())
    event = (rng.random(n) < 0.7).astype(int)
    return pd.DataFrame({"case_id": [f"{s}-{i:04d}" for i, s in enumerate(site)], "site": site,
                         "time_days": rng.gamma(2.0, 200.0, n).round() + 1, "event": event,
                         "age": rng.normal(60, 10, n),
                         "source_digest": [sha256_bytes(f"images of {seed}/{i}".encode()) for i in range(n)]})


def test_no_patient_is_in_two_sets_and_the_test_set_is_locked_first() -> None:
    patients = cohort()
    splits = make_splits(patients, SplitParams())
    drawn = patients.loc[[in_test_set(20250515, 0.2, d) for d in patients["source_digest"]], "case_id"]
    assert splits.test == tuple(sorted(drawn)) and 15 <= len(splits.test) <= 45  # Binomial(150, 0.2): 30 +- 5
    assert len(splits.test) + len(splits.development) == 150 and splits.rule == SPLIT_RULE
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


def test_folds_are_stratified_and_the_summary_reports_the_achieved_test_fraction_per_site() -> None:
    patients = cohort(300, seed=1)
    splits = make_splits(patients, SplitParams())
    summary = splits.summary(patients)
    rows = summary[summary["site"] == "all"].set_index("set")
    development_rate = rows.loc["development", "event_rate"]
    for fold in splits.folds:  # the folds are stratified by event x site x time band
        assert abs(rows.loc[f"{fold.name}/validation", "event_rate"] - development_rate) < 0.05
        assert abs(len(fold.validation) - len(splits.development) / 5) <= 3
    development = patients[patients["case_id"].isin(splits.development)]
    site_share = development["site"].value_counts(normalize=True).sort_index()
    for fold in splits.folds:
        share = development.set_index("case_id").loc[list(fold.validation), "site"].value_counts(normalize=True)
        assert np.allclose(share.sort_index(), site_share, atol=0.04)
    # the test set is per patient, not stratified: its fraction and event rate per site are reported
    test = summary[summary["set"] == "test"].set_index("site")
    assert test.loc["all", "fraction"] == pytest.approx(len(splits.test) / 300)
    for site, group in patients.groupby("site"):
        in_test = group["case_id"].isin(splits.test)
        assert test.loc[site, "fraction"] == pytest.approx(in_test.mean())
        assert test.loc[site, "event_rate"] == pytest.approx(group.loc[in_test, "event"].mean())
    assert splits.strata["test"] == {"patients": len(splits.test), "events": int(test.loc["all", "events"]),
                                     "fraction": round(len(splits.test) / 300, 4)}


def test_the_test_fraction_over_many_patients_is_close_to_test_fraction() -> None:
    for fraction in (0.1, 0.2, 0.3):
        drawn = np.mean([in_test_set(11, fraction, sha256_bytes(str(i).encode())) for i in range(20000)])
        assert abs(drawn - fraction) < 4 * np.sqrt(fraction * (1 - fraction) / 20000)
    patients = cohort(2000, seed=3)
    splits = make_splits(patients, SplitParams())
    assert abs(len(splits.test) / 2000 - 0.2) < 0.03
    in_test = patients["case_id"].isin(splits.test)
    assert abs(patients.loc[in_test, "event"].mean() - patients["event"].mean()) < 0.05  # balanced on average


def pseudonymised(source: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """``source`` (with a ``source_id`` column) as the cohort would hold it under ``key``."""
    pseudo = Pseudonymiser(key)
    frame = source.assign(case_id=[pseudo.case_id(s, i) for s, i in zip(source["site"], source["source_id"],
                                                                        strict=True)])
    return frame.sample(frac=1.0, random_state=len(key))  # and in another row order


def by_source(splits: Splits, frame: pd.DataFrame) -> tuple[set[str], list[tuple[set[str], set[str]]]]:
    """The test set and the folds as source ids (what is the same whatever the key)."""
    source_of = frame.set_index("case_id")["source_id"]
    return ({source_of[c] for c in splits.test},
            [({source_of[c] for c in f.train}, {source_of[c] for c in f.validation}) for f in splits.folds])


@pytest.mark.parametrize("scheme", ["kfold", "leave_one_site_out"])
def test_two_keys_give_the_same_membership_and_folds(scheme: str) -> None:
    source = cohort(200, seed=4).drop(columns="case_id")
    source["source_id"] = [f"P{i:05d}" for i in range(len(source))]
    first, second = pseudonymised(source, b"k" * 32), pseudonymised(source, b"another-key-" * 3)
    assert not set(first["case_id"]) & set(second["case_id"])  # the ids differ completely
    params = SplitParams(scheme=scheme)  # type: ignore[arg-type]
    a = make_splits(first, params, pseudonym_key_fingerprint=Pseudonymiser(b"k" * 32).fingerprint)
    b = make_splits(second, params, pseudonym_key_fingerprint=Pseudonymiser(b"another-key-" * 3).fingerprint)
    assert by_source(a, first) == by_source(b, second)
    assert a.fingerprint == b.fingerprint  # the split itself does not depend on the key ...
    assert a.ids_digest != b.ids_digest and a.pseudonym_key_fingerprint != b.pseudonym_key_fingerprint  # ... its ids do


def test_new_patients_never_move_an_existing_patient_between_test_and_development() -> None:
    before = cohort(150, seed=5)
    grown = pd.concat([before, cohort(150, seed=6).assign(case_id=lambda f: "new-" + f["case_id"])],
                      ignore_index=True)
    old, new = make_splits(before, SplitParams()), make_splits(grown, SplitParams())
    assert set(old.test) <= set(new.test) and set(old.development) <= set(new.development)
    arrived = grown.iloc[150:]
    expected = {c for c, d in zip(arrived["case_id"], arrived["source_digest"], strict=True)
                if in_test_set(20250515, 0.2, d)}
    assert set(new.test) - set(old.test) == expected  # the newcomers join the test set by the same rule
    # so a model retrained on the grown cohort is tested on no patient the earlier model trained on
    assert not set(new.test) & set(old.development)
    assert new.fingerprint != old.fingerprint
    # raising the test fraction only adds patients to the test set
    assert set(old.test) <= set(make_splits(before, SplitParams(test_fraction=0.3)).test)


def test_patients_with_identical_source_images_share_their_set_and_fold() -> None:
    patients = cohort(150, seed=7)
    duplicates = patients.iloc[:20].assign(case_id=lambda f: "dup-" + f["case_id"])
    patients = pd.concat([patients, duplicates], ignore_index=True)
    splits = make_splits(patients, SplitParams())
    fold_of = {c: f.name for f in splits.folds for c in f.validation}
    for original, copy in zip(patients["case_id"].iloc[:20], duplicates["case_id"], strict=True):
        assert (original in splits.test) == (copy in splits.test)
        assert fold_of.get(original) == fold_of.get(copy)


def test_digests_come_from_the_cohort_and_a_missing_one_is_refused() -> None:
    patients = cohort()
    table = patients.drop(columns="source_digest").iloc[::-1]
    merged = with_source_digests(table, patients[["case_id", "source_digest"]].iloc[::2].reset_index(drop=True))
    assert merged.index.equals(table.index) and merged["source_digest"].notna().sum() == 75
    with pytest.raises(SplitError, match=r"75 patient\(s\) have no source_digest .*Re-run ingestion"):
        make_splits(merged, SplitParams())
    with pytest.raises(SplitError, match=r"lacks column.*source_digest.*with_source_digests"):
        make_splits(table, SplitParams())
    with pytest.raises(SplitError, match=r"no source_digest column.*re-run ingestion"):
        with_source_digests(table, table)


def test_a_drawn_test_set_too_small_or_without_a_death_is_refused_with_what_to_change() -> None:
    patients = cohort(20, seed=8)
    with pytest.raises(SplitError, match=r"too few test patients: .* put [01] of 20 .*training\.splits\.seed"):
        make_splits(patients, SplitParams(test_fraction=0.01))
    censored_test = patients.assign(event=[0 if in_test_set(20250515, 0.2, d) else 1
                                           for d in patients["source_digest"]])
    with pytest.raises(SplitError, match=r"test set's \d+ patients \(seed 20250515\) include no death.*seed"):
        make_splits(censored_test, SplitParams())
    with pytest.raises(SplitError, match=r"too few development patients: .* for 10 folds"):
        make_splits(patients, SplitParams(folds=10))


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
    assert not any(d in text for d in cohort()["source_digest"])  # no digests (nor draws) are stored
    legacy = splits.to_json()
    del legacy["rule"], legacy["pseudonym_key_fingerprint"]  # a file written before the rule was recorded
    assert Splits.from_json(legacy).rule == "stratified-case-id/0"


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
    assert sum(splits.strata["fold_depths"].values()) == len(splits.development)
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


def test_each_fold_sets_aside_stopping_patients_among_its_training_patients_whatever_the_key() -> None:
    patients = cohort(200, seed=9)
    splits = make_splits(patients, SplitParams())
    event = patients.set_index("case_id")["event"]
    for fold in splits.folds:
        stop, train = set(fold.stop), set(fold.train)
        assert stop < train and not stop & set(fold.validation) and not stop & set(splits.test)
        assert abs(len(stop) / len(train) - 0.2) < 0.03 and event[list(stop)].sum() >= 1
        assert abs(event[list(stop)].mean() - event[list(train)].mean()) < 0.05  # by event value
    assert Splits.from_json(splits.to_json()) == splits
    assert all(f.stop == () for f in make_splits(patients, SplitParams(stop_fraction=0)).folds)
    source = patients.drop(columns="case_id").assign(source_id=[f"P{i}" for i in range(200)])
    first, second = pseudonymised(source, b"k" * 32), pseudonymised(source, b"q" * 32)
    a, b = make_splits(first, SplitParams()), make_splits(second, SplitParams())
    source_a, source_b = first.set_index("case_id")["source_id"], second.set_index("case_id")["source_id"]
    assert [{source_a[c] for c in f.stop} for f in a.folds] == [{source_b[c] for c in f.stop} for f in b.folds]
    legacy = splits.to_json()
    for fold in legacy["folds"]:
        del fold["stop"]  # a file from before stopping patients: none
    assert all(f.stop == () for f in Splits.from_json(legacy).folds)
    bad = splits.to_json()
    bad["folds"][0]["stop"] = bad["folds"][0]["validation"][:1]
    with pytest.raises(SplitError, match="fold-1: the stopping patients must be some, not all, of its training"):
        Splits.from_json(bad)


def test_a_small_fold_gets_two_stopping_patients_and_keeps_one_of_each_outcome_to_fit_on() -> None:
    from survival_model.training.splits import Fold, stopping_patients

    frame = pd.DataFrame({"case_id": list("abcde"), "site": "s", "time_days": [10.0, 20, 30, 40, 50],
                          "event": [1, 1, 1, 0, 1], "source_digest": [f"d{i}" for i in range(5)]})
    stop = stopping_patients(frame, Fold("fold-1", tuple("abcd"), ("e",)), SplitParams())
    assert len(stop) == 2 and set(stop) <= set("abc")  # two deaths: a death and the censored one stay to fit
    assert stopping_patients(frame, Fold("fold-1", tuple("ad"), ("e",)), SplitParams()) == ()  # too small


def test_a_fold_of_three_keeps_two_to_fit_on_and_so_sets_none_aside() -> None:
    """Three training patients: two stopping patients would leave one to fit on (no Cox risk set); none."""
    from survival_model.training.splits import Fold, stopping_patients

    frame = pd.DataFrame({"case_id": list("abcd"), "site": "s", "time_days": [10.0, 20, 30, 40],
                          "event": [1, 1, 1, 1], "source_digest": [f"d{i}" for i in range(4)]})
    assert stopping_patients(frame, Fold("fold-1", tuple("abc"), ("d",)), SplitParams()) == ()
    assert len(stopping_patients(frame, Fold("fold-1", tuple("abcd"), ()), SplitParams())) == 2
