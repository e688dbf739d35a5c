"""Content fingerprints: file digests, stable hashes of records, and the library code version.

Cache keys in this project are built from *content* (DESIGN.md section 4): the bytes of the inputs a
step reads, the params section it uses and the version of the library code it runs. This module
provides the three ingredients.

File digests are memoised by (path, size, mtime_ns, inode), the way ``git``'s index avoids re-reading
unchanged files. The digest itself is always of the bytes; the memo only saves re-reading a file whose stat
signature has not changed. Pass ``memo=None`` to hash every time.

The memo is one small JSON file per memoised path (:class:`DigestMemo`), written under a temporary name and
renamed into place, so it needs no lock and no database: it works the same for threads, processes and Dask
workers on other hosts sharing the work directory. (It was a SQLite table in WAL mode, which needs shared
memory between its users, so it does not work on NFS, where every host has its own.) The memo lives in the
work directory, which leaves ingestion, and source paths name patients (a case folder is often an MRN): an
entry is named by a keyed hash of its path (HMAC-SHA256 with a key derived from the pseudonymisation key) and
holds no path, so it reveals no more than the pseudonymous case ids do (a plain hash of a path could be
matched by hashing guessed MRN folders). Keeping it beside the sources instead would need write access to
them, often read-only and shared.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any

from survival_model import __version__

log = logging.getLogger(__name__)

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
    return work_dir / "cache" / "digests"


class DigestMemo:
    """A memo of file digests: ``<folder>/<h[:2]>/<h>.json`` per memoised path, ``h`` = HMAC-SHA256(``key``,
    path) (``key``: ``Pseudonymiser.memo_key``), holding the file's stat signature and its digest, never the path.

    Safe across threads, processes and hosts without locks (module docstring): an entry is replaced whole by a
    rename, so a reader sees an old entry, a new one or none; a torn or unreadable entry is a miss (the file is
    hashed again), and a memo that cannot be written only costs a re-read next time.
    """

    def __init__(self, folder: Path, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the digest memo's key must hold at least 16 bytes")
        self.folder = Path(folder)
        self._key = key
        # The memo of earlier versions: a SQLite file beside this folder holding source paths in clear
        for name in ("digests.sqlite", "digests.sqlite-wal", "digests.sqlite-shm"):
            (self.folder.parent / name).unlink(missing_ok=True)

    def __repr__(self) -> str:  # never print the key
        return f"DigestMemo({self.folder})"

    def close(self) -> None:
        """Nothing to release (no file is kept open); the callers' ``try/finally`` needs no change."""

    def entry(self, path: Path) -> Path:
        """The file memoising ``path``."""
        name = hmac.new(self._key, str(path).encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
        return self.folder / name[:2] / f"{name}.json"

    def lookup(self, path: Path, signature: str) -> str | None:
        try:
            record = json.loads(self.entry(path).read_bytes())
        except (OSError, ValueError):  # not memoised yet, or unreadable: hash the file
            return None
        if not isinstance(record, dict) or record.get("signature") != signature:
            return None
        digest = record.get("digest")
        return digest if isinstance(digest, str) else None

    def store(self, path: Path, signature: str, digest: str) -> None:
        entry = self.entry(path)
        # the temporary name follows survival_model.imageio's (".<name>.<hex>.tmp"), which crash clean-ups know
        tmp = entry.parent / f".{entry.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"signature": signature, "digest": digest}), encoding="utf-8")
            os.replace(tmp, entry)
        except OSError as exc:
            log.debug("could not memoise a file digest (%s): it is hashed again next time", exc)
        finally:
            tmp.unlink(missing_ok=True)


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
