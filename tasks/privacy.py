"""The pseudonymisation key, resolved from where the deployment keeps it: the one way the flows get a
:class:`~survival_model.ingest.privacy.Pseudonymiser`.

Precedence (``PrivacyParams``): a Prefect Secret block named by ``privacy.key_secret_block`` (when named,
it must exist), the environment variable named by ``privacy.key_env`` (when set), the file
``privacy.key_file`` (when it exists). A missing key is created at ``key_file`` only for a local run with
``privacy.create_key_if_missing``; in a run from a Prefect deployment, or with creation off, it is a
:class:`~survival_model.errors.ConfigError` saying where the key was looked for and how to provide it:
a new key would silently give every patient a new id (and hide which patients a registered model trained
on), so a deployment must bring the key its ids were made with.

The environment is read here, at run time, never on import; the library only receives the key's bytes.
Only the key's fingerprint is logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from prefect.blocks.system import Secret
from prefect.runtime import deployment as prefect_deployment

from survival_model.config import PrivacyParams
from survival_model.errors import ConfigError
from survival_model.ingest.privacy import Pseudonymiser, key_from_text, load_or_create_key

log = logging.getLogger(__name__)

#: Loads a Prefect Secret block's stored value by name (the raw value, not ``Secret.get()``, which parses a
#: string as JSON); replaceable in tests.
SecretLoader = Callable[[str], object]


@dataclass(frozen=True)
class ResolvedKey:
    """The key's bytes and a description of where they came from (never the value)."""

    key: bytes
    source: str


def in_deployment() -> bool:
    """Whether this code runs inside a flow run started from a Prefect deployment (served or work pool)."""
    return prefect_deployment.id is not None


def load_secret_block(name: str) -> object:
    """The value of the Prefect Secret block ``name`` as stored (a :class:`ConfigError` when it cannot be loaded).

    Not ``Secret.get()``: it parses a string value as JSON, so a key text ``"abc..."`` would lose its quotes and
    ``123...`` would become a number: the same text would then be another key from a block than from a file or
    the environment."""
    try:
        block = cast("Secret[Any]", Secret.load(name, _sync=True))  # type: ignore[call-arg]  # sync even in async code
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(
            f"privacy.key_secret_block: the Prefect Secret block {name!r} cannot be loaded ({exc}). Create it on "
            "the Prefect server this run uses, e.g. `python -c \"from pathlib import Path; from prefect.blocks."
            f"system import Secret; Secret(value=Path('KEYFILE').read_text().strip()).save('{name}')\"` "
            "with the key file the cohort's ids were made with, or set privacy.key_secret_block to null"
        ) from None
    value: object = block.value.get_secret_value()
    return value


def resolve_key(
    params: PrivacyParams,
    *,
    deployment: bool,
    environ: Mapping[str, str],
    load_secret: SecretLoader = load_secret_block,
) -> ResolvedKey:
    """The key from the first configured source that has it (see the module docstring)."""
    if params.key_secret_block is not None:
        value = load_secret(params.key_secret_block)
        if not isinstance(value, str | bytes):
            raise ConfigError(f"privacy.key_secret_block: the Prefect Secret block {params.key_secret_block!r} "
                              "must hold the key as a string, not a JSON value")
        source = f"the Prefect Secret block {params.key_secret_block!r}"
        return ResolvedKey(key_from_text(value, source), source)
    if params.key_env is not None and environ.get(params.key_env, "").strip():
        source = f"the environment variable {params.key_env}"
        return ResolvedKey(key_from_text(environ[params.key_env], source), source)
    path = Path(params.key_file).expanduser()
    if path.is_file():
        return ResolvedKey(load_or_create_key(path, create=False), f"the key file {path}")
    if params.create_key_if_missing and not deployment:
        key = load_or_create_key(path, create=True)
        log.warning("no pseudonymisation key was found: created a new random one at %s (keep it, and give the same "
                    "key to every machine and deployment that must produce the same case ids)", path)
        return ResolvedKey(key, f"the key file {path} (created now)")
    raise ConfigError(missing_key_message(params, path, deployment=deployment))


def missing_key_message(params: PrivacyParams, path: Path, *, deployment: bool) -> str:
    """Where the key was looked for, why none was created, and how to provide it."""
    looked = [f"the environment variable {params.key_env} (not set)" if params.key_env else
              "no environment variable (privacy.key_env is null)",
              f"the key file {path} (not found)"]
    why = ("this run is from a Prefect deployment, where a key is never created (a new key gives every patient "
           "a new id)" if deployment else "privacy.create_key_if_missing is false")
    return (
        f"no pseudonymisation key: looked for {' and '.join(looked)}; {why}. Provide the key the cohort's ids "
        "were made with: name a Prefect Secret block holding it in privacy.key_secret_block, or set "
        f"{params.key_env or 'the variable named in privacy.key_env'} in the environment the flow runs in, or "
        f"place the key file at {path}. A first local run (`survival-model run`) creates one."
    )


def pseudonymiser(
    params: PrivacyParams,
    *,
    deployment: bool | None = None,
    environ: Mapping[str, str] | None = None,
    load_secret: SecretLoader = load_secret_block,
) -> Pseudonymiser:
    """The run's pseudonymiser, from the key where ``params`` say it is (``deployment``: detected from
    Prefect's runtime when None; ``environ``: ``os.environ`` when None)."""
    resolved = resolve_key(params, deployment=in_deployment() if deployment is None else deployment,
                           environ=os.environ if environ is None else environ, load_secret=load_secret)
    pseudo = Pseudonymiser(resolved.key)
    log.info("pseudonymisation key from %s (fingerprint %s)", resolved.source, pseudo.fingerprint)
    return pseudo


def check_key_available(params: PrivacyParams, *, environ: Mapping[str, str] | None = None,
                        load_secret: SecretLoader = load_secret_block) -> str:
    """Where a deployment's runs in this environment will find the key (never creating one), or a
    :class:`ConfigError` saying how to provide it: for ``serve``, before any scheduled run fails."""
    return resolve_key(params, deployment=True, environ=os.environ if environ is None else environ,
                       load_secret=load_secret).source
