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
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from survival_model.errors import ConfigError

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

    def __repr__(self) -> str:  # never print the key
        return f"Pseudonymiser(fingerprint={self.fingerprint})"


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
