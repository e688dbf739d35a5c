"""Reliability, privacy: nothing but pseudonyms, column names, reason codes and counts leaves ingestion.

The unit tests pin each rule (an unmapped primary site reported by case id, never by its text; messages and errors
naming ``<source>`` and case ids instead of source paths and ids; the digest memo keyed by keyed path hashes). The
scan plants names, MRNs, birth dates, free text and identifying DICOM tags in a tiny cohort whose case folders look
like MRNs, runs ingestion and imaging with MLflow logging under the session's Prefect server, and looks for every
planted value in the work directory, MLflow's store and Prefect's database (``benchmarks/privacy_scan.py``).
"""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from survival_model.config import IngestParams, load_params
from survival_model.errors import DataSourceError, PatientDataError, TransientIOError
from survival_model.fingerprint import DigestMemo, _stat_signature, file_digest
from survival_model.ingest import report
from survival_model.ingest.clinical import HarmoniseClinical
from survival_model.ingest.privacy import SOURCE, Pseudonymiser, Redactor
from survival_model.stage import run
from tests.conftest import REPO

PSEUDO = Pseudonymiser(b"privacy-test-key" * 2)
NAME = "Quintessa Vandermolen"
MRN = "8300141927"


def benchmark() -> ModuleType:
    """``benchmarks/privacy_scan.py`` (planting and scanning live there, so the benchmark and the test agree)."""
    path = REPO / "benchmarks" / "privacy_scan.py"
    spec = importlib.util.spec_from_file_location("privacy_scan_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def clinical_site(tmp_path: Path, rows: list[list[str]]) -> HarmoniseClinical:
    """A one-site clinical stage over a CSV holding an identifying column beside the declared ones."""
    path = tmp_path / MRN / "clinical.csv"  # even the table's folder is identifying
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=["id", "name", "time", "event", "primary"]).to_csv(path, index=False)
    params = load_params(REPO / "params.yaml", {
        "work_dir": str(tmp_path / "work"), "institutions.site_a.clinical.path": str(path),
        "institutions.site_a.clinical.id_column": "id", "institutions.site_a.clinical.columns": {"primary": "primary"},
        "institutions.site_a.clinical.survival.time_column": "time",
        "institutions.site_a.clinical.survival.event_column": "event"})
    return HarmoniseClinical("site_a", params.institutions["site_a"], IngestParams(), PSEUDO, tmp_path / "work")


def text_of(folder: Path) -> str:
    """Every file below ``folder`` as text (Parquet through pandas), lower-case."""
    parts = []
    for file in sorted(folder.rglob("*")):
        if file.suffix == ".parquet":
            parts.append(pd.read_parquet(file).to_csv())
        elif file.is_file():
            parts.append(file.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts).lower()


def test_an_unmapped_primary_site_is_reported_by_the_patients_pseudonym_never_by_its_text(tmp_path: Path) -> None:
    stage = clinical_site(tmp_path, [["p1", NAME, "10", "1", NAME], ["p2", NAME, "20", "0", "Thyroid"],
                                     ["p3", NAME, "30", "1", "lung"]])
    result = run(stage)
    assert result.error is None
    expected = {PSEUDO.case_id("site_a", "p1"): 1, PSEUDO.case_id("site_a", "p2"): 1}
    assert result.report["primary_mapped_to_other"] == expected
    markdown = report.summary_markdown({"patients": 3, "events": 2, "quarantined_patients": 0, "fingerprint": "f",
                                        "quarantine_by_reason": {}, "sites": {},
                                        "clinical_reports": {"site_a": result.report}})
    assert ("`site_a` primary: 2 values not in the vocabulary, mapped to `other` (rows of patients "
            f"{', '.join(sorted(expected))})") in markdown
    for text in (markdown.lower(), text_of(stage.folder())):
        assert "quintessa" not in text and "vandermolen" not in text and "thyroid" not in text
        assert MRN not in text


def test_an_unusable_clinical_table_is_named_by_its_source_folder_placeholder(tmp_path: Path) -> None:
    stage = clinical_site(tmp_path, [["p1", NAME, "10", "1", "lung"]])
    stage.institution.clinical.path.unlink()
    result = run(stage)
    assert result.error is not None and "clinical.csv not found" in result.error
    assert MRN not in result.error and str(tmp_path) not in result.error
    assert MRN not in text_of(stage.folder())


def test_the_redactor_names_source_folders_and_ids_by_placeholder_and_case_id(tmp_path: Path) -> None:
    root = tmp_path / "images"
    case = PSEUDO.case_id("site_a", MRN)
    redact = Redactor((root,), ((MRN, case),))
    text = f"cannot read {root}/{MRN}/{MRN}-t1c.nii.gz (kps {MRN}1, id {MRN}) beside {tmp_path}/images_old"
    assert redact(text) == (f"cannot read {SOURCE}/{case}/{case}-t1c.nii.gz (kps {MRN}1, id {case}) beside "
                            f"{tmp_path}/images_old")  # another folder, and a longer number, are left alone
    assert redact(f"{root.resolve()}/x") == f"{SOURCE}/x"


@pytest.mark.parametrize(
    ("raised", "kind", "extra"),
    [
        (lambda p: FileNotFoundError(2, "No such file or directory", str(p)), OSError, {}),
        (lambda p: TransientIOError(f"busy: {p}"), TransientIOError, {}),
        (lambda p: DataSourceError(f"image folder {p} does not exist"), DataSourceError, {}),
        (lambda p: PatientDataError("unreadable_image", f"{p} cannot be read"), PatientDataError,
         {"reason": "unreadable_image"}),
        (lambda p: ValueError(f"bad {p}"), RuntimeError, {}),
    ],
)
def test_an_error_naming_a_source_path_is_raised_again_without_it_and_of_its_kind(
    tmp_path: Path, raised: object, kind: type[Exception], extra: dict[str, str]
) -> None:
    root = tmp_path / "images"
    path = root / MRN / "t1c.nii.gz"
    case = PSEUDO.case_id("site_a", MRN)
    with pytest.raises(kind, match=rf"{SOURCE}/{case}/t1c\.nii\.gz") as caught, \
            Redactor((root,), ((MRN, case),)).errors():
        raise raised(path)  # type: ignore[operator]
    assert MRN not in str(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__
    for name, value in extra.items():
        assert getattr(caught.value, name) == value


def test_an_error_naming_nothing_identifying_is_raised_unchanged(tmp_path: Path) -> None:
    error = ValueError("the mask is empty")
    with pytest.raises(ValueError, match="the mask is empty") as caught, Redactor((tmp_path,)).errors():
        raise error
    assert caught.value is error


def test_the_digest_memo_holds_keyed_hashes_of_paths_never_the_paths(tmp_path: Path) -> None:
    source = tmp_path / "data" / MRN / f"{MRN}-t1c.nii.gz"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"voxels")
    cache = tmp_path / "work" / "cache"
    cache.mkdir(parents=True)
    old = sqlite3.connect(cache / "digests.sqlite")  # an earlier version's memo: paths in clear
    with old:
        old.execute("CREATE TABLE digests_v2 (path TEXT PRIMARY KEY, signature TEXT, digest TEXT)")
        old.execute("INSERT INTO digests_v2 VALUES (?, 's', 'd')", (str(source),))
    old.close()
    memo = DigestMemo(cache / "digests", PSEUDO.memo_key)
    digest = file_digest(source, memo)
    stored = b"".join(p.read_bytes() + str(p).encode() for p in cache.rglob("*") if p.is_file())
    assert MRN.encode() not in stored  # the old memo is gone; the new one names and holds no path
    signature = _stat_signature(source.stat())
    assert DigestMemo(cache / "digests", PSEUDO.memo_key).lookup(source.resolve(), signature) == digest
    other = DigestMemo(cache / "digests", Pseudonymiser(b"another-key-0123456789").memo_key)
    assert other.lookup(source.resolve(), signature) is None  # a guess cannot be checked without the key
    with pytest.raises(ValueError, match="at least 16 bytes"):
        DigestMemo(cache / "digests", b"short")


def test_discovery_names_a_missing_image_folder_by_placeholder(tmp_path: Path) -> None:
    from tasks import ingest as ingest_tasks

    params = load_params(REPO / "params.yaml", {"institutions.site_b.images.root": str(tmp_path / MRN)})
    found = ingest_tasks.discover.fn("site_b", params.institutions["site_b"], PSEUDO)
    assert found.error is not None and SOURCE in found.error and MRN not in found.error


# --------------------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------------------


def prefect_database() -> Path:
    """The session Prefect server's SQLite file."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().server.database.connection_url.get_secret_value())  # type: ignore[union-attr]
    assert "sqlite" in url and "///" in url, url
    return Path(url.split("///", 1)[1])


@contextmanager
def library_logs_to_prefect() -> Iterator[None]:
    """The library's log lines in Prefect's database, as ``survival-model run`` sends them
    (``PREFECT_LOGGING_EXTRA_LOGGERS=survival_model``; read when Prefect is imported, hence set here by hand)."""
    from prefect.logging.handlers import APILogHandler

    handler, logger = APILogHandler(), logging.getLogger("survival_model")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        handler.flush()
        logger.removeHandler(handler)
        logger.setLevel(level)


def rows(database: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as con:
        return con.execute(query).fetchall()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_no_planted_identifier_reaches_the_work_directory_mlflow_or_prefect(tmp_path: Path) -> None:
    scan = benchmark()
    cohort = scan.plant_cohort(tmp_path / "data", scan.SMALL)
    scan.check_planted(cohort)  # the control: every planted value is found in the inputs, as the scan reads them
    work = tmp_path / "run" / "work"
    overrides = scan.planted_overrides(cohort.data_dir, work)
    with library_logs_to_prefect():
        table = scan.ingest_and_imaging(str(REPO / "params.yaml"), overrides)
    assert table.summary["patients"] >= 5

    # Prefect stores task runs, logs and artifacts asynchronously: wait until this run's last ones are there
    database = prefect_database()
    keys = Pseudonymiser(Path(overrides["privacy.key_file"]).read_bytes().strip())
    cases = sorted(pd.read_parquet(next((work / "ingest" / "cohort").rglob("cohort.parquet")))["case_id"])
    expected = {f"features-{c}" for c in cases} | {f"images-{c}" for c in cases}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = {str(r[0]) for r in rows(database, "SELECT name FROM task_run")}
        logged = rows(database, "SELECT count(*) FROM log WHERE message LIKE 'features: %'")[0][0]
        artifacts = rows(database, "SELECT count(*) FROM artifact WHERE key = 'preprocessing-qc'")[0][0]
        if expected <= names and logged and artifacts:
            break
        time.sleep(1)
    assert expected <= names, "the task runs are named by pseudonymous case ids"
    planted_ids = {keys.case_id(site, planted) for (site, _), planted in cohort.ids.items()}
    assert set(cases) <= planted_ids  # the MRN-like folders are the patients, under their pseudonyms

    places = {**scan.work_places(work), "Prefect database": [database.with_name(database.name + s)
                                                             for s in ("", "-wal", "-journal")]}
    result = scan.scan(places, cohort.planted)
    assert all(result.files.values()), result.files  # every place holds files this run wrote
    leaks = sorted({(leak.planted.kind, leak.needle, leak.place, leak.file.name, leak.view) for leak in result.leaks})
    assert leaks == [], f"{len(result.leaked_values())} of {len(cohort.planted)} planted values leaked: {leaks[:20]}"
