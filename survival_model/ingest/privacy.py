"""Pseudonymisation: stable, keyed case identifiers that do not reveal the source identifier.

``case_id = <site>-<first 12 hex of HMAC-SHA256(key, site + US + source id)>``. The key is a random
secret kept in a file outside the repository (``privacy.key_file``); the same key gives the same ids
on every run, a different key gives unlinkable ids. Nothing here logs or stores the source id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from survival_model.config import PrivacyParams
from survival_model.errors import ConfigError

_MIN_KEY_BYTES = 16


class Pseudonymiser:
    """Maps (site, source id) to a pseudonymous case id with a keyed hash."""

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise ConfigError(f"pseudonymisation key too short ({len(key)} bytes; need >= {_MIN_KEY_BYTES})")
        self._key = key

    @classmethod
    def from_params(cls, params: PrivacyParams) -> Pseudonymiser:
        return cls(load_or_create_key(params.key_file, create=params.create_key_if_missing))

    def case_id(self, site: str, source_id: str) -> str:
        mac = hmac.new(self._key, f"{site}\x1f{source_id}".encode(), hashlib.sha256).hexdigest()
        return f"{site}-{mac[:12]}"

    @property
    def fingerprint(self) -> str:
        """A digest that changes with the key (safe to put in cache keys and logs; reveals nothing)."""
        return hmac.new(self._key, b"survival-model key fingerprint", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:  # never print the key
        return f"Pseudonymiser(fingerprint={self.fingerprint})"


def load_or_create_key(path: Path, *, create: bool) -> bytes:
    """Read the key file, creating a random 32-byte key (mode 0600) if allowed and missing."""
    path = Path(path).expanduser()
    if path.is_file():
        key = path.read_bytes().strip()
        if len(key) < _MIN_KEY_BYTES:
            raise ConfigError(f"pseudonymisation key file {path} holds fewer than {_MIN_KEY_BYTES} bytes")
        return key
    if not create:
        raise ConfigError(
            f"pseudonymisation key file {path} not found; create it (e.g. `python -c \"import "
            f"secrets; print(secrets.token_hex(32))\" > {path}`) or set privacy.create_key_if_missing"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_or_create_key(path, create=False)
    try:
        os.write(fd, key + b"\n")
    finally:
        os.close(fd)
    return key
