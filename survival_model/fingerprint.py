"""Content fingerprints: file digests, stable hashes of records, and the library code version.

Cache keys in this project are built from *content* (DESIGN.md section 4): the bytes of the inputs a
step reads, the params section it uses and the version of the library code it runs. This module
provides the three ingredients.

File digests are memoised in a small SQLite table keyed by (path, size, mtime_ns, inode), the way
``git``'s index avoids re-reading unchanged files. The digest itself is always of the bytes; the
memo only saves re-reading a file whose stat signature has not changed. Pass ``memo=None`` to hash
every time. The memo lives in the work directory, which leaves ingestion, and source paths name patients
(a case folder is often an MRN): it stores a keyed hash of each path (HMAC-SHA256 with a key derived from the
pseudonymisation key), never the path, so it reveals no more than the pseudonymous case ids do. (Keeping it beside
the sources instead would need write access to them, often read-only and shared.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any

from survival_model import __version__

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return value.as_posix()
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, bytes):
        return sha256_bytes(value)
    return value


def stable_hash(*parts: Any) -> str:
    """SHA-256 of a canonical JSON rendering of ``parts`` (dict order and Path types do not matter)."""
    text = json.dumps([_jsonable(p) for p in parts], sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(text.encode("utf-8"))


def content_order(records: Sequence[Mapping[Any, Any]], exclude: tuple[str, ...] = ("case_id",)) -> list[int]:
    """Positions of ``records`` (e.g. feature-table rows) sorted by a digest of their values without the
    ``exclude`` fields (the pseudonymous id, which depends on the secret key): an order that is the same on
    every machine and for every key. Whatever depends on the order of patients (augmentation draws by position,
    a baseline's inner cross-validation, a random forest's bootstrap) then depends on the data and the seed
    only. Identical records keep their input order (they are interchangeable)."""
    digests = [stable_hash({k: v for k, v in r.items() if k not in exclude}) for r in records]
    return sorted(range(len(records)), key=lambda i: digests[i])


def digest_memo_path(work_dir: Path) -> Path:
    """The work directory's memo of source file digests (:class:`DigestMemo`), shared by every worker and run
    on that work directory."""
    return work_dir / "cache" / "digests.sqlite"


class DigestMemo:
    """A process- and thread-safe memo of file digests in a SQLite file, its rows keyed by HMAC-SHA256(``key``,
    path) (see module docstring; ``key``: ``Pseudonymiser.memo_key``)."""

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the digest memo's key must hold at least 16 bytes")
        self.path = path
        self._key = key
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(path, timeout=60, check_same_thread=False)
        with self._lock:
            exists = self._con.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='digests_v3'").fetchone()
            if not exists:  # a write (and its lock) only the first time
                with self._con:
                    self._con.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
                    self._con.execute(
                        "CREATE TABLE IF NOT EXISTS digests_v3 (path TEXT PRIMARY KEY, signature TEXT, digest TEXT)"
                    )
                    old = self._con.execute(
                        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='digests_v2'").fetchone()
                    self._con.execute("DROP TABLE IF EXISTS digests_v2")  # an older memo: source paths in clear
                if old:
                    self._con.execute("VACUUM")  # and their bytes, from the file's free pages and its log
                    self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def __repr__(self) -> str:  # never print the key
        return f"DigestMemo({self.path})"

    def _row(self, path: Path) -> str:
        return hmac.new(self._key, str(path).encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def close(self) -> None:
        self._con.close()

    def lookup(self, path: Path, signature: str) -> str | None:
        with self._lock:
            row = self._con.execute(
                "SELECT digest FROM digests_v3 WHERE path=? AND signature=?", (self._row(path), signature)
            ).fetchone()
        return None if row is None else str(row[0])

    def store(self, path: Path, signature: str, digest: str) -> None:
        with self._lock, self._con:
            self._con.execute("INSERT OR REPLACE INTO digests_v3 VALUES (?, ?, ?)",
                              (self._row(path), signature, digest))


def _stat_signature(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"


def _folder_files(folder: Path) -> list[tuple[str, os.stat_result]]:
    """(relative posix path, stat) of every file below ``folder``, sorted (os.walk: a DICOM series
    is hundreds of files, and pathlib's rglob/relative_to cost more than the stats)."""
    entries = []
    for dirpath, _dirs, names in os.walk(folder):
        prefix = os.path.relpath(dirpath, folder)
        for name in names:
            full = os.path.join(dirpath, name)  # noqa: PTH118 - hot loop, see docstring
            relative = name if prefix == "." else f"{prefix}/{name}"
            entries.append((relative.replace(os.sep, "/"), os.stat(full)))  # noqa: PTH116
    return sorted(entries, key=lambda e: e[0])


def file_digest(path: Path, memo: DigestMemo | None = None) -> str:
    """Digest of a file, or of a folder (e.g. a DICOM series) as the hash of its files' digests.

    With a memo, a folder is looked up once by the stat signature of all its files (a DICOM series
    is hundreds of files), and a file by its own signature.
    """
    path = Path(path)
    if path.is_dir():
        files = _folder_files(path)
        signature = ""
        if memo is not None:
            signature = stable_hash([(name, _stat_signature(stat)) for name, stat in files])
            cached = memo.lookup(path.resolve(), signature)
            if cached is not None:
                return cached
        digest = stable_hash([(name, sha256_file(path / name)) for name, _ in files])
        if memo is not None:
            memo.store(path.resolve(), signature, digest)
        return digest
    if memo is None:
        return sha256_file(path)
    signature = _stat_signature(path.stat())
    cached = memo.lookup(path.resolve(), signature)
    if cached is not None:
        return cached
    digest = sha256_file(path)
    memo.store(path.resolve(), signature, digest)
    return digest


@lru_cache(maxsize=64)
def code_version(*modules: str) -> str:
    """A short hash of the source of the given library modules/packages (and the package version).

    Stages put this in their cache keys: Prefect's own ``TASK_SOURCE`` policy only sees the text of the
    task function, not the library it calls (Prefect issue #23062), so an edited helper here would
    otherwise be served stale results from the cache.
    """
    digest = hashlib.sha256()
    for name in sorted(set(modules)):
        module = import_module(name)
        file = getattr(module, "__file__", None)
        if file is None:
            raise ValueError(f"module {name!r} has no source file to version")
        root = Path(file).parent if Path(file).name == "__init__.py" else Path(file)
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for f in files:
            digest.update(f.relative_to(root.parent).as_posix().encode())
            digest.update(f.read_bytes())
    digest.update(__version__.encode())
    return digest.hexdigest()[:16]
