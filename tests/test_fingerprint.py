"""Content fingerprints and the code version."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from survival_model.fingerprint import DigestMemo, code_version, file_digest, stable_hash


def test_stable_hash_ignores_dict_order_and_path_type() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash(Path("/x/y")) == stable_hash("/x/y")
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_file_digest_memo_tracks_content_changes(tmp_path: Path) -> None:
    memo = DigestMemo(tmp_path / "memo", b"k" * 16)
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = file_digest(path, memo)
    assert first == file_digest(path) == file_digest(path, memo)
    path.write_bytes(b"two")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert file_digest(path, memo) != first


def test_the_digest_memo_is_plain_files_without_the_path_and_a_torn_entry_is_a_miss(tmp_path: Path) -> None:
    # one JSON file per path, renamed into place: no SQLite (WAL needs memory shared by one host) and no locks
    memo_dir = tmp_path / "memo"
    path = tmp_path / "patient-MRN12345" / "t1.nii.gz"
    path.parent.mkdir()
    path.write_bytes(b"image")
    digest = file_digest(path, DigestMemo(memo_dir, b"k" * 16))
    entries = [p for p in memo_dir.rglob("*") if p.is_file()]
    assert len(entries) == 1 and entries[0].suffix == ".json"
    assert "MRN12345" not in entries[0].read_text() and "MRN12345" not in str(entries[0])
    other = DigestMemo(memo_dir, b"k" * 16)  # another process or host on the same work directory
    signature = f"{path.stat().st_size}:{path.stat().st_mtime_ns}:{path.stat().st_ino}"
    assert other.lookup(path.resolve(), signature) == digest
    entries[0].write_text('{"signature": "')  # torn (cannot happen through a rename, but a disk can lie)
    assert other.lookup(path.resolve(), signature) is None
    assert file_digest(path, other) == digest  # hashed again and memoised again
    assert other.lookup(path.resolve(), signature) == digest


def test_folder_digest_covers_every_file(tmp_path: Path) -> None:
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"a")
    before = file_digest(tmp_path / "series")
    (tmp_path / "series" / "2.dcm").write_bytes(b"b")
    assert file_digest(tmp_path / "series") != before


def test_code_version_follows_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_version("fakepkg")
    (package / "__init__.py").write_text("X = 2\n")
    code_version.cache_clear()
    sys.modules.pop("fakepkg", None)
    assert code_version("fakepkg") != before


def test_content_order_ignores_the_ids_and_the_input_order() -> None:
    from survival_model.fingerprint import content_order

    rows = [{"case_id": f"a-{i}", "age": float(i % 3), "time_days": 10.0 * i} for i in range(6)]
    other = [{**r, "case_id": f"zz-{9 - i}"} for i, r in enumerate(rows)][::-1]  # other ids, reversed
    first = [rows[i]["time_days"] for i in content_order(rows)]
    second = [other[i]["time_days"] for i in content_order(other)]
    assert first == second and sorted(first) == sorted(r["time_days"] for r in rows)
