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
    memo = DigestMemo(tmp_path / "memo.sqlite")
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = file_digest(path, memo)
    assert first == file_digest(path) == file_digest(path, memo)
    path.write_bytes(b"two")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert file_digest(path, memo) != first


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
