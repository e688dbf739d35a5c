"""Pseudonymisation: stable, keyed case identifiers that do not reveal the source identifier.

``case_id = <site>-<first 12 hex of HMAC-SHA256(key, site + US + source id)>``. The key is a random
secret that belongs to the deployment, not to the code: the library only receives its bytes
(:class:`Pseudonymiser`) or reads a key file (:func:`load_or_create_key`); choosing the source (a Prefect
Secret block, an environment variable, the file) is the flows layer's job (``tasks.privacy``, precedence
in ``PrivacyParams``). The same key gives the same ids on every run, a different key gives unlinkable
ids. Nothing here logs or stores the source id or the key: only :attr:`Pseudonymiser.fingerprint`, a
digest that identifies the key without revealing it, is recorded (cohort summary, splits, model package).

Nothing random in the pipeline depends on the key: the splits are drawn from the source-image digests
(``survival_model.training.splits``), so a new key changes the ids, never which patients are tested.

What leaves ingestion (its tables, reports, quarantine records, logs, error messages, task names and the flows'
parameters, hence Prefect's database and MLflow) holds pseudonyms, column names, reason codes and counts only: a
:class:`Redactor` rewrites a message that names a source path or a source id (a case folder's name, often an MRN)
before it is stored, logged or raised out of an ingestion stage, and the work directory's memo of source-file
digests is keyed by a keyed hash of each path (:attr:`Pseudonymiser.memo_key`), never the path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from survival_model.errors import ConfigError, DataSourceError, PatientDataError, SurvivalModelError

_MIN_KEY_BYTES = 16


class Pseudonymiser:
    """Maps (site, source id) to a pseudonymous case id with a keyed hash."""

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise ConfigError(f"pseudonymisation key too short ({len(key)} bytes; need >= {_MIN_KEY_BYTES})")
        self._key = key

    def case_id(self, site: str, source_id: str) -> str:
        mac = hmac.new(self._key, f"{site}\x1f{source_id}".encode(), hashlib.sha256).hexdigest()
        return f"{site}-{mac[:12]}"

    @property
    def fingerprint(self) -> str:
        """A digest that changes with the key (safe to put in cache keys and logs; reveals nothing)."""
        return hmac.new(self._key, b"survival-model key fingerprint", hashlib.sha256).hexdigest()[:16]

    @property
    def memo_key(self) -> bytes:
        """The key of the digest memo's keyed path hashes (``survival_model.fingerprint.DigestMemo``): derived from
        the pseudonymisation key, so a memo is no easier to link to source paths than the case ids to source ids."""
        return hmac.new(self._key, b"survival-model digest memo", hashlib.sha256).digest()

    def __repr__(self) -> str:  # never print the key
        return f"Pseudonymiser(fingerprint={self.fingerprint})"


#: What a redacted source folder reads as in a message.
SOURCE = "<source>"


def _path_forms(folder: Path) -> list[str]:
    """The ways a message may write ``folder``: as declared, absolute, resolved (symlinks), POSIX."""
    forms = {str(folder), folder.as_posix(), str(folder.expanduser().absolute())}
    with suppress(OSError, RuntimeError):  # a symlink loop: the other forms remain
        forms.add(str(folder.expanduser().resolve()))
    return sorted((f for f in forms if f not in {"", ".", "/"}), key=len, reverse=True)


@dataclass(frozen=True)
class Redactor:
    """Rewrites a message about source data so that it can leave ingestion (module docstring).

    ``folders`` (an institution's image root, its clinical table's folder) read as ``<source>``; each source id in
    ``ids`` (the case folder or file-name id) as the pseudonymous case id it stands for, wherever it is not part of
    a longer word or number: ``/data/site_a/images/0012345678/0012345678-t1c.nii.gz`` becomes
    ``<source>/site_a-3f2c.../site_a-3f2c...-t1c.nii.gz``, which still says which file of which patient.
    """

    folders: tuple[Path, ...] = ()
    ids: tuple[tuple[str, str], ...] = ()  # (source id, pseudonymous case id)

    def __call__(self, text: str) -> str:
        forms = sorted({form for folder in self.folders for form in _path_forms(Path(folder))}, key=len, reverse=True)
        for form in forms:  # a folder, not a prefix of another name: "/data" must not eat "/database"
            text = re.sub(re.escape(form) + r"(?![\w.-])", SOURCE, text)
        for source_id, case_id in sorted(self.ids, key=lambda pair: -len(pair[0])):
            if source_id:
                text = re.sub(rf"(?<![0-9A-Za-z]){re.escape(source_id)}(?![0-9A-Za-z])", case_id, text)
        return text

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Re-raise an exception whose message names a source folder or id with its message redacted (and without
        the original chained to it: a traceback would print it). Its kind is kept where it can be, so that
        retries still tell transient I/O errors (``OSError``) from data errors."""
        try:
            yield
        except Exception as exc:
            message = str(exc)
            redacted = self(message)
            if redacted == message:
                raise
            raise _same_kind(exc, redacted) from None


def _same_kind(exc: Exception, message: str) -> Exception:
    if isinstance(exc, PatientDataError):
        return PatientDataError(exc.reason, message)
    for kind in (DataSourceError, ConfigError, SurvivalModelError, OSError):
        if isinstance(exc, kind):
            try:
                return type(exc)(message)
            except TypeError:  # a constructor with other arguments
                return kind(message)
    return RuntimeError(message)



def key_from_text(text: str | bytes, source: str) -> bytes:
    """The key from a secret's text (stripped), whatever the source: the same text is the same key.
    ``source`` names where it came from, for the error message (never the value)."""
    key = (text.encode() if isinstance(text, str) else bytes(text)).strip()
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(f"the pseudonymisation key from {source} holds fewer than {_MIN_KEY_BYTES} bytes: "
                          "use a random one, e.g. the output of `python -c \"import secrets; "
                          "print(secrets.token_hex(32))\"`")
    return key


def load_or_create_key(path: Path, *, create: bool) -> bytes:
    """Read the key file, creating a random 32-byte key (mode 0600) if allowed and missing (:func:`create_key`)."""
    path = Path(path).expanduser()
    if path.is_file():
        return key_from_text(path.read_bytes(), f"the key file {path}")
    if not create:
        raise ConfigError(
            f"pseudonymisation key file {path} not found; create it (e.g. `python -c \"import "
            f"secrets; print(secrets.token_hex(32))\" > {path}`) or set privacy.create_key_if_missing"
        )
    return create_key(path)


def create_key(path: Path) -> bytes:
    """A new random key at ``path``, unless another process creates one there first (then that one).

    The key is written whole to a temporary file (mode 0600) in the same folder, then hard-linked to ``path``:
    the link appears complete or not at all, and fails when ``path`` exists (create-if-absent), so neither a
    concurrent first run nor a kill halfway leaves an empty or partial key file. The temporary file is removed
    (a kill can leave it behind: a hidden ``.<name>.*.tmp`` file, never read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    temporary = Path(name)
    try:
        try:
            data = key + b"\n"
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_key(path, create=False)
    finally:
        temporary.unlink(missing_ok=True)
    return key
