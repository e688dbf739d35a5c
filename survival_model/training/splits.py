"""Patient-level splits: a locked test set first, then cross-validation folds on the rest.

The rule (``SPLIT_RULE``) depends on the data and ``SplitParams.seed`` only, never on the machine or on
the pseudonymisation key:

- **Test set, per patient.** ``u = sha256(seed, "test", source_digest)`` read as a uniform number in
  [0, 1); the patient is in the locked test set iff ``u < test_fraction``. ``source_digest`` is the
  cohort's digest of the patient's raw image files (``survival_model.ingest.cohort``): it does not
  depend on the key that makes the case ids. So the same cohort and seed give the same test set on
  every machine whatever the key, and membership is **stable as the cohort grows**: a patient never
  moves between test and development when others arrive, and new patients join the test set by the
  same rule (a retrained model's test set never holds a patient an earlier model trained on, unless
  the split settings change; raising ``test_fraction`` only adds patients to the test set). Patients
  with identical source images share one assignment, so duplicates cannot straddle the split.
- **Folds of the development set.** Stratified K-fold by event x site x survival-time band (strata too
  small to be divided are merged, :func:`strata_labels`, and what was merged is recorded), over the
  development patients ordered by ``sha256(seed, "folds", source_digest)``, never by case id; patients
  with identical source images are one unit and share a fold. ``leave_one_site_out``: one fold per site.
- **Stopping patients of a fold.** Of the fold's training patients, per event value, the first
  ``stop_fraction`` in ``sha256(seed, "stop/<fold>", source_digest)`` order (:func:`stopping_patients`):
  every training choice (penalty, epoch) is made on them, never on the fold's validation patients.

The test count is Binomial(n, test_fraction), not fixed: :func:`make_splits` refuses (``SplitError``)
a test set with fewer than 2 patients or no death, and a development set too small for the folds, and
says what to change. The test set is not stratified (per-patient membership cannot be); the achieved
test fraction and event rate per site are reported by :meth:`Splits.summary`.

Splits are persisted as JSON by pseudonymous case id only (no digests, no draws), with the rule's name,
the split fingerprint (key-independent: it hashes the source digests and outcomes, not the ids) and the
fingerprint of the pseudonymisation key the ids were made with, so every later stage (and a reviewer)
reads exactly the same sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from survival_model.config import SplitParams
from survival_model.errors import SurvivalModelError
from survival_model.fingerprint import stable_hash
from survival_model.imageio import write_json

#: Stratification factors of the folds, most important first; merging drops them from the end.
FACTORS = ("event", "site", "band")
REQUIRED_COLUMNS = ("case_id", "site", "time_days", "event", "source_digest")
#: The split rule's name and version, recorded with every splits file (see the module docstring).
SPLIT_RULE = "source-digest-threshold/1"
#: What splits files written before the rule was recorded used: stratified draws over the case ids
#: (different on every machine, since the ids depend on the pseudonymisation key).
LEGACY_RULE = "stratified-case-id/0"
_NAMESPACE = "survival-model/splits"


class SplitError(SurvivalModelError):
    """The patients cannot be split as configured (too few, one site for leave-one-site-out, ...)."""


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: its training patients, among them the **stopping** patients (``stop``: every
    choice made while training, such as the epoch kept, is made on them; the rest are fitted on), and its
    validation patients (scored once, by the model kept)."""

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Splits:
    """The locked test set and the folds of the development set, by case id."""

    test: tuple[str, ...]
    development: tuple[str, ...]
    folds: tuple[Fold, ...]
    params: SplitParams
    strata: dict[str, Any]
    #: Key-independent: source digests, outcomes, sites, params and rule (see :func:`split_fingerprint`).
    fingerprint: str
    rule: str = SPLIT_RULE
    #: ``Pseudonymiser.fingerprint`` of the key the listed case ids were made with (never the key).
    pseudonym_key_fingerprint: str | None = None

    def check(self) -> None:
        """Raise :class:`SplitError` unless no patient is in two of train, validation and test."""
        test = set(self.test)
        if len(test) != len(self.test) or test & set(self.development):
            raise SplitError("a patient is both in the test set and in the development set")
        for fold in self.folds:
            train, validation = set(fold.train), set(fold.validation)
            if train & validation or (train | validation) & test:
                raise SplitError(f"{fold.name}: a patient is in two of train, validation and test")
            if train | validation != set(self.development):
                raise SplitError(f"{fold.name}: train + validation is not the development set")
            if not set(fold.stop) <= train or len(set(fold.stop)) == len(train) > 0:
                raise SplitError(f"{fold.name}: the stopping patients must be some, not all, of its training patients")

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "pseudonym_key_fingerprint": self.pseudonym_key_fingerprint,
            "params": self.params.model_dump(mode="json"),
            "strata": self.strata,
            "test": list(self.test),
            "development": list(self.development),
            "folds": [{"name": f.name, "train": list(f.train), "validation": list(f.validation), "stop": list(f.stop)}
                      for f in self.folds],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Splits:
        splits = cls(
            test=tuple(data["test"]),
            development=tuple(data["development"]),
            folds=tuple(Fold(f["name"], tuple(f["train"]), tuple(f["validation"]), tuple(f.get("stop", ())))
                        for f in data["folds"]),
            params=SplitParams.model_validate(data["params"]),
            strata=dict(data["strata"]),
            fingerprint=str(data["fingerprint"]),
            rule=str(data.get("rule", LEGACY_RULE)),
            pseudonym_key_fingerprint=data.get("pseudonym_key_fingerprint"),
        )
        splits.check()
        return splits

    @property
    def ids_digest(self) -> str:
        """A digest of the listed case ids (the file's content beyond the key-independent fingerprint)."""
        return stable_hash(self.test, [(f.name, f.train, f.validation, f.stop) for f in self.folds])

    def save(self, path: Path) -> Path:
        return write_json(self.to_json(), path)

    @classmethod
    def load(cls, path: Path) -> Splits:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SplitError(f"cannot read the splits file {path}: {exc}") from None
        return cls.from_json(data)

    def summary(self, patients: pd.DataFrame) -> pd.DataFrame:
        """Patients, events and event rate per set and site, and ``fraction``: the share of that site's
        patients in the set (for ``test``, the achieved test fraction). ``patients``: the frame the
        splits were made from."""
        frame = patients.set_index("case_id")
        sets: list[tuple[str, Sequence[str]]] = [("test", self.test), ("development", self.development)]
        sets += [(f"{f.name}/{part}", ids) for f in self.folds
                 for part, ids in (("stop", f.stop), ("validation", f.validation)) if ids or part == "validation"]
        split = frame.loc[[*self.test, *self.development]]
        totals = {"all": len(split), **split.groupby("site", sort=True).size().to_dict()}
        rows = []
        for name, ids in sets:
            part = frame.loc[list(ids)]
            for site, group in [("all", part), *part.groupby("site", sort=True)]:
                rows.append({"set": name, "site": site, "patients": len(group), "events": int(group["event"].sum()),
                             "event_rate": float(group["event"].mean()) if len(group) else float("nan"),
                             "fraction": len(group) / totals[site] if totals.get(site) else float("nan")})
        return pd.DataFrame(rows)


def time_bands(time_days: pd.Series, bands: int) -> pd.Series:
    """Survival-time band (0 .. bands-1) from quantiles of the observed times of all patients."""
    if bands <= 1:
        return pd.Series(0, index=time_days.index)
    edges = np.quantile(time_days.to_numpy(dtype=float), np.linspace(0, 1, bands + 1)[1:-1])
    return pd.Series(np.searchsorted(edges, time_days.to_numpy(dtype=float), side="right"), index=time_days.index)


def strata_labels(factors: pd.DataFrame, min_count: int,
                  max_classes: int | None = None) -> tuple[pd.Series, dict[str, int]]:
    """One stratum label per row from ``factors`` (columns most important first).

    A stratum with fewer than ``min_count`` rows joins the largest sibling stratum (same factors but
    the last), or its parent stratum (the last factor dropped) when it has no large enough sibling,
    repeatedly; with ``max_classes``, the minimum size is raised until there are at most that many
    strata. Returns the labels and how many rows ended in strata of each depth (factors kept).
    """
    columns = list(factors.columns)
    parts = factors.astype(str).apply(lambda c: c.name + "=" + c).to_numpy()

    def prefix(i: int, depth: int) -> str:
        return "|".join(parts[i, :depth]) or "all"

    def depth_of(label: str) -> int:
        return 0 if label == "all" else label.count("|") + 1

    needed = min_count
    while True:
        labels = pd.Series([prefix(i, len(columns)) for i in range(len(parts))], index=factors.index)
        for depth in range(len(columns), 0, -1):  # deepest first: a merge only creates shallower strata
            counts = labels.map(labels.value_counts())
            at_depth = labels.map(depth_of) == depth
            rare = at_depth & (counts < needed)
            parents = pd.Series([prefix(i, depth - 1) for i in range(len(parts))], index=factors.index)
            for parent in sorted(set(parents[rare])):
                big = labels[at_depth & ~rare & (parents == parent)]
                target = str(big.value_counts().index[0]) if len(big) else parent
                labels[rare & (parents == parent)] = target
        counts = labels.map(labels.value_counts())
        if (counts < needed).any() and labels.nunique() > 1:  # the root stratum is still too small
            labels[counts < needed] = str(labels.value_counts().index[0])
        if max_classes is None or labels.nunique() <= max_classes or needed >= len(labels):
            break
        needed += 1
    depths = pd.Series([depth_of(str(v)) for v in labels]).value_counts().sort_index()
    return labels, {str(d): int(n) for d, n in depths.items()}


def check_outcomes(patients: pd.DataFrame) -> None:
    """Raise :class:`SplitError` when a patient has no survival outcome (``time_days`` or ``event`` missing).

    Such patients come from a site whose clinical table declares no survival (``clinical.survival``
    null): they can be predicted, not trained on. The message counts them per site.
    """
    missing = patients["time_days"].isna() | patients["event"].isna()
    if not missing.any():
        return
    by_site = patients.loc[missing, "site"].astype(str).value_counts().sort_index()
    sites = ", ".join(f"{site}: {n}" for site, n in by_site.items())
    raise SplitError(
        f"{int(missing.sum())} patient(s) have no survival outcome (site(s) {sites}): they can be predicted, "
        "not trained on. Training needs time_days and event for every patient: declare clinical.survival "
        "for those sites (a site without it has no outcomes), or leave them out of the training data."
    )


def unit_draw(seed: int, purpose: str, source_digest: str) -> float:
    """A number in [0, 1) from SHA-256 of (seed, purpose, source digest): the same on every machine."""
    message = "\x1f".join((_NAMESPACE, str(seed), purpose, source_digest)).encode()
    return int.from_bytes(hashlib.sha256(message).digest()[:8], "big") / 2.0**64


def in_test_set(seed: int, test_fraction: float, source_digest: str) -> bool:
    """The locked test set's per-patient rule: ``unit_draw(seed, "test", digest) < test_fraction``."""
    return unit_draw(seed, "test", source_digest) < test_fraction


def with_source_digests(patients: pd.DataFrame, cohort: pd.DataFrame) -> pd.DataFrame:
    """``patients`` (e.g. the feature table) with each patient's ``source_digest`` from the cohort table,
    matched by case id (rows and their order unchanged)."""
    if "source_digest" not in cohort.columns:
        raise SplitError("the cohort table has no source_digest column (written by an older version): "
                         "re-run ingestion so that every patient has the digest its split is drawn from")
    digests = cohort.drop_duplicates("case_id").set_index("case_id")["source_digest"]
    frame = patients.copy()
    frame["source_digest"] = frame["case_id"].map(digests)
    return frame


def split_fingerprint(frame: pd.DataFrame, params: SplitParams) -> str:
    """Identifies a split without the pseudonymisation key: the rule, the params and, per patient in
    source-digest order, the digest, site, time and event (everything membership depends on). The same
    data and params give the same fingerprint on every machine; the case ids a key gives to those
    patients are in the splits file beside it (:attr:`Splits.ids_digest`)."""
    records = sorted(zip(frame["source_digest"].astype(str), frame["site"].astype(str),
                         frame["time_days"].astype(float), frame["event"].astype(int), strict=True))
    return stable_hash("splits", SPLIT_RULE, [list(r) for r in records], params.model_dump(mode="json"))


def _checked_frame(patients: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in patients.columns]
    if missing:
        hint = (" (the cohort's source_digest: add it with with_source_digests(frame, cohort.cohort()))"
                if "source_digest" in missing else "")
        raise SplitError(f"the patients table lacks column(s) {', '.join(missing)}{hint}")
    frame = patients.loc[:, list(REQUIRED_COLUMNS)].copy()
    if frame["case_id"].duplicated().any():
        raise SplitError("case ids must be unique: one row per patient")
    check_outcomes(frame)
    no_digest = frame["source_digest"].isna() | (frame["source_digest"].astype(str) == "")
    if no_digest.any():
        by_site = frame.loc[no_digest, "site"].astype(str).value_counts().sort_index()
        sites = ", ".join(f"{site}: {n}" for site, n in by_site.items())
        raise SplitError(f"{int(no_digest.sum())} patient(s) have no source_digest (site(s) {sites}): the split "
                         "is drawn from it. Re-run ingestion (the cohort records each patient's source digest) "
                         "and pass the cohort's source_digest column with the patients.")
    frame["source_digest"] = frame["source_digest"].astype(str)
    frame["event"] = frame["event"].astype(int)
    return frame.sort_values("case_id").reset_index(drop=True)  # order of the input never matters


def _check_sizes(frame: pd.DataFrame, is_test: pd.Series, params: SplitParams) -> None:
    """Refuse a drawn test set too small or without a death, or a development set too small for the folds."""
    n, n_test = len(frame), int(is_test.sum())
    n_dev, events = n - n_test, int(frame.loc[is_test, "event"].sum())
    expected = f"test_fraction {params.test_fraction:g} of {n} patients expects about {params.test_fraction * n:.1f}"
    change = ("change training.splits.seed (each seed draws another test set) or raise "
              "training.splits.test_fraction")
    if n_test < 2:
        raise SplitError(f"too few test patients: the split rule (seed {params.seed}) put {n_test} of {n} patients "
                         f"in the locked test set ({expected}); at least 2 are needed: {change}, or add patients")
    if events == 0 and not frame["event"].any():
        raise SplitError(f"none of the {n} patients has an observed death: survival models cannot be trained or "
                         "scored; check the clinical tables' event column")
    if events == 0:
        raise SplitError(f"the locked test set's {n_test} patients (seed {params.seed}) include no death: nothing "
                         f"can be scored on it; {change}")
    units = frame.loc[~is_test, "source_digest"].nunique()
    if params.scheme == "kfold" and units < 2 * params.folds:
        raise SplitError(f"too few development patients: {n_dev} ({units} distinct source images) for "
                         f"{params.folds} folds, at least {2 * params.folds} needed ({expected} in the test set): "
                         "lower training.splits.folds or training.splits.test_fraction, change "
                         "training.splits.seed, or add patients")
    if params.scheme == "leave_one_site_out" and n_dev < 2:
        raise SplitError(f"too few development patients: {n_dev} of {n} ({expected} in the test set): lower "
                         "training.splits.test_fraction or change training.splits.seed")


def make_splits(patients: pd.DataFrame, params: SplitParams, *,
                pseudonym_key_fingerprint: str | None = None) -> Splits:
    """Locked test set, then folds, from a frame with ``case_id, site, time_days, event, source_digest`` per
    patient (see the module docstring for the rule). ``pseudonym_key_fingerprint`` (the cohort's) is
    recorded with the ids."""
    frame = _checked_frame(patients)
    is_test = frame["source_digest"].map(lambda d: in_test_set(params.seed, params.test_fraction, d)).astype(bool)
    _check_sizes(frame, is_test, params)
    frame["band"] = time_bands(frame["time_days"], params.time_bands)
    development = frame.loc[~is_test]
    test_ids = tuple(sorted(frame.loc[is_test, "case_id"]))
    dev_ids = tuple(development["case_id"])

    test_events = int(frame.loc[is_test, "event"].sum())
    strata: dict[str, Any] = {"factors": list(FACTORS),
                              "test": {"patients": len(test_ids), "events": test_events,
                                       "fraction": round(len(test_ids) / len(frame), 4)}}
    if params.scheme == "leave_one_site_out":
        folds = _site_folds(development)
    else:
        folds, strata["fold_depths"] = _kfold(development, params)
    folds = tuple(dataclasses.replace(f, stop=stopping_patients(development, f, params)) for f in folds)
    splits = Splits(test_ids, dev_ids, folds, params, strata, split_fingerprint(frame, params),
                    SPLIT_RULE, pseudonym_key_fingerprint)
    splits.check()
    return splits


def _kfold(development: pd.DataFrame, params: SplitParams) -> tuple[tuple[Fold, ...], dict[str, int]]:
    """Stratified K-fold over the development patients' distinct source digests, in key-independent
    ``unit_draw(seed, "folds", digest)`` order; patients sharing a digest share a fold."""
    # one unit per source digest (duplicates: the row first by outcome, not by case id, stands for it)
    units = (development.sort_values(["source_digest", "time_days", "event", "site"])
             .drop_duplicates("source_digest").copy())
    units["order"] = units["source_digest"].map(lambda d: unit_draw(params.seed, "folds", d))
    units = units.sort_values(["order", "source_digest"]).reset_index(drop=True)
    labels, depths = strata_labels(units.loc[:, list(FACTORS)], params.folds)
    splitter = StratifiedKFold(n_splits=params.folds)  # no shuffle: the order above is the seeded draw
    fold_of = {}
    for k, (_, validation) in enumerate(splitter.split(units, labels)):
        fold_of.update(dict.fromkeys(units.loc[validation, "source_digest"], k))
    assigned = development["source_digest"].map(fold_of)
    folds = tuple(
        Fold(f"fold-{k + 1}", tuple(sorted(development.loc[assigned != k, "case_id"])),
             tuple(sorted(development.loc[assigned == k, "case_id"])))
        for k in range(params.folds)
    )
    return folds, depths


def stopping_patients(development: pd.DataFrame, fold: Fold, params: SplitParams) -> tuple[str, ...]:
    """The fold's stopping patients, drawn over its training patients' distinct source digests in
    ``unit_draw(seed, "stop/<fold>", digest)`` order: per event value (deaths, censored) the first
    ``round(stop_fraction * n)``, at least one death when the fold trains on two or more, and at least 2
    in all (one patient has no Cox risk set and no C-index: a fold too small for 2 gets none), always
    leaving at least one patient of each event value and 2 in all to fit on (a fold too small for that gets
    none: its epoch is then chosen on the training loss). Key-independent like the rest of the
    split; patients sharing a digest are stopping patients together."""
    if params.stop_fraction == 0:
        return ()
    train = development[development["case_id"].isin(set(fold.train))]
    units = train.sort_values(["source_digest", "time_days", "event", "site"]).drop_duplicates("source_digest")
    order = units["source_digest"].map(lambda d: unit_draw(params.seed, f"stop/{fold.name}", d))
    units = units.assign(order=order).sort_values(["order", "source_digest"]).reset_index(drop=True)
    sizes = units["event"].value_counts().to_dict()
    room = {e: n - 1 for e, n in sizes.items()}  # one of each event value always stays to fit on
    quota = {e: min(room[e], round(params.stop_fraction * n)) for e, n in sizes.items()}
    if sizes.get(1, 0) >= 2:
        quota[1] = max(quota[1], 1)
    taken = {e: 0 for e in sizes}
    chosen = []
    for row in units.itertuples(index=False):  # quotas first, in draw order
        if taken[row.event] < quota[row.event]:
            taken[row.event] += 1
            chosen.append(row.source_digest)
    for row in units.itertuples(index=False):  # then up to 2 in all, in draw order
        if len(chosen) >= 2:
            break
        if row.source_digest not in chosen and taken[row.event] < room[row.event]:
            taken[row.event] += 1
            chosen.append(row.source_digest)
    if len(chosen) < 2 or len(units) - len(chosen) < 2:
        return ()
    return tuple(sorted(train.loc[train["source_digest"].isin(set(chosen)), "case_id"]))


def _site_folds(development: pd.DataFrame) -> tuple[Fold, ...]:
    sites = sorted(development["site"].unique())
    if len(sites) < 2:
        raise SplitError("leave_one_site_out needs patients from at least two sites")
    return tuple(
        Fold(f"site-{site}", tuple(sorted(development.loc[development["site"] != site, "case_id"])),
             tuple(sorted(development.loc[development["site"] == site, "case_id"])))
        for site in sites
    )
