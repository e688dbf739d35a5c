"""Bad input: the corpus of broken files, tables and folders (survival_model/synthetic/bad_inputs.py) through
ingestion as a user runs it. Per kind: the bad patient quarantined with a reason naming the problem, or the site
refused with a message naming the file; every other patient completes; the inputs are byte-identical afterwards;
nothing outside an image folder is opened. The corpus is built and ingested once per module (about 10 s)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from survival_model.config import load_params
from survival_model.ingest.cohort import run_ingestion
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.synthetic.bad_inputs import (
    GOOD,
    KINDS,
    SHARED_SITE,
    Corpus,
    KindResult,
    build_corpus,
    evaluate,
    input_checksums,
)

PSEUDONYMISER = Pseudonymiser(b"b" * 32)
#: Paths opened from Python while a corpus is ingested (an audit hook cannot be removed: it records only while on).
_OPENED: list[str] = []
_RECORDING: list[bool] = [False]


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _RECORDING[0] and event == "open" and isinstance(args[0], str | Path):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@dataclass(frozen=True)
class Ingested:
    corpus: Corpus
    cohort: pd.DataFrame
    quarantine: pd.DataFrame
    results: dict[str, KindResult]
    before: dict[str, str]
    after: dict[str, str]
    opened: tuple[str, ...]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    root = tmp_path_factory.mktemp("bad-inputs")
    corpus = build_corpus(root / "corpus")
    before = input_checksums(corpus.root)
    params = load_params(corpus.params_path, {"work_dir": str(root / "work")})
    _OPENED.clear()
    _RECORDING[0] = True
    try:
        result = run_ingestion(params, PSEUDONYMISER)
    finally:
        _RECORDING[0] = False
    cohort, quarantine = result.cohort(), result.quarantine()
    results = {r.kind.name: r for r in evaluate(corpus, cohort, quarantine, PSEUDONYMISER.case_id)}
    return Ingested(corpus, cohort, quarantine, results, before, input_checksums(corpus.root), tuple(_OPENED))


def test_the_corpus_has_at_least_30_kinds_across_images_masks_tables_and_layouts() -> None:
    assert len(KINDS) >= 30 and len({k.name for k in KINDS}) == len(KINDS)
    assert {k.group for k in KINDS} == {"image", "mask", "clinical", "layout"}
    assert all(len(k.name) <= 32 for k in KINDS)  # each may name an institution


@pytest.mark.parametrize("kind", [k.name for k in KINDS])
def test_each_kind_is_handled_as_expected(ingested: Ingested, kind: str) -> None:
    result = ingested.results[kind]
    assert result.ok, f"{kind} ({result.kind.breaks}): expected {result.kind.expected.describe()}, got " \
                      f"{result.got}: {'; '.join(result.problems)}"


def test_every_other_patient_completes(ingested: Ingested) -> None:
    """The shared site's good patient and every accepted kind's patient are in the cohort; each site of its own
    that is not refused keeps its good patient."""
    cohort = set(zip(ingested.cohort["site"], ingested.cohort["case_id"], strict=True))
    assert (SHARED_SITE, PSEUDONYMISER.case_id(SHARED_SITE, GOOD)) in cohort
    expected_good = {(site, PSEUDONYMISER.case_id(site, GOOD)) for kind in KINDS if kind.expected.outcome != "refuse"
                     for site, _ in [ingested.corpus.where[kind.name]]}
    assert expected_good <= cohort
    accepted = {(site, PSEUDONYMISER.case_id(site, bad)) for kind in KINDS if kind.expected.outcome == "accept"
                for site, bad in [ingested.corpus.where[kind.name]]}
    assert accepted <= cohort
    quarantined = set(zip(ingested.quarantine["site"], ingested.quarantine["case_id"], strict=True))
    assert not cohort & quarantined


def test_inputs_are_byte_identical_afterwards(ingested: Ingested) -> None:
    assert len(ingested.before) > 400
    assert ingested.after == ingested.before


def test_nothing_outside_an_image_folder_is_opened(ingested: Ingested) -> None:
    """The links out of a source tree point into ``outside/``: neither their digest nor a reader opens them."""
    outside = str(ingested.corpus.outside.resolve())
    assert any(str(ingested.corpus.root) in p or "/work/" in p for p in ingested.opened), "the hook saw no open"
    assert not [p for p in ingested.opened if str(Path(p).resolve()).startswith(outside)]


def test_messages_name_files_not_paths(ingested: Ingested) -> None:
    messages = " ".join(ingested.quarantine["message"].astype(str))
    assert str(ingested.corpus.root) not in messages and "clinical.csv" in messages
