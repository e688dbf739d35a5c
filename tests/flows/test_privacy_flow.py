"""The pseudonymisation key in a real ingestion run: taken from the environment or a Prefect Secret block,
recorded by fingerprint only, and never written to any file or log."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from flows.ingest import ingest
from survival_model.config import Params, load_params
from survival_model.ingest.privacy import Pseudonymiser
from tests.conftest import REPO, TRAIN_FAST, overrides_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "tHe-PsEuDoNyM-kEy-0f-tHiS-tEsT-7c1e2a"  # distinctive text: found by a grep if it leaks anywhere
BLOCK = "test-pseudonym-key"


def ingest_params(data_dir: Path, work_dir: Path, **privacy: object) -> Params:
    """params.yaml on the tiny cohort (ingestion only: no training settings needed)."""
    overrides = {k: v for k, v in overrides_for(data_dir, work_dir).items() if k not in TRAIN_FAST}
    return load_params(REPO / "params.yaml", {**overrides, **privacy})


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def prefect_database() -> Path | None:
    """The harness's SQLite file (Prefect's API database), when it is one."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().server.database.connection_url.get_secret_value())  # type: ignore[union-attr]
    path = Path(url.split("///", 1)[1]) if "sqlite" in url and "///" in url else None
    return path if path is not None and path.is_file() else None


def test_the_key_is_never_written_or_logged_and_its_fingerprint_is_recorded(
    tiny_cohort_master: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from prefect.blocks.system import Secret

    monkeypatch.setenv("SURVIVAL_MODEL_PSEUDONYM_KEY", KEY)
    params = ingest_params(tiny_cohort_master, tmp_path / "env" / "work", **{"privacy.create_key_if_missing": False})
    with caplog.at_level(logging.DEBUG):
        cohort = ingest(params)
    expected = Pseudonymiser(KEY.encode())
    assert cohort.summary["pseudonym_key_fingerprint"] == expected.fingerprint
    assert not params.privacy.key_file.exists()  # taken from the environment: no key file made
    assert expected.case_id("site_a", "SYN-MET-00001-000") in set(cohort.cohort()["case_id"])

    # the same key text from a Prefect Secret block gives the same ids
    monkeypatch.delenv("SURVIVAL_MODEL_PSEUDONYM_KEY")
    Secret(value=KEY).save(BLOCK, overwrite=True)
    from_block = ingest_params(tiny_cohort_master, tmp_path / "block" / "work",
                               **{"privacy.key_secret_block": BLOCK, "privacy.create_key_if_missing": False})
    with caplog.at_level(logging.DEBUG):
        again = ingest(from_block)
    assert set(again.cohort()["case_id"]) == set(cohort.cohort()["case_id"])
    assert again.summary["pseudonym_key_fingerprint"] == expected.fingerprint
    assert f"pseudonymisation key from the Prefect Secret block '{BLOCK}' (fingerprint {expected.fingerprint})" \
        in caplog.text

    needle = KEY.encode()
    assert files_holding(tmp_path, needle) == []  # work dirs: cohort, summaries, caches, Prefect results
    assert files_holding(Path(os.environ["PREFECT_HOME"]), needle) == []  # Prefect's home (its logs, results)
    database = prefect_database()
    if database is not None:  # the Secret block holds it there (that is its job); nothing else may
        assert database.read_bytes().count(needle) <= 1
    out, err = capfd.readouterr()
    assert KEY not in caplog.text and KEY not in out and KEY not in err
