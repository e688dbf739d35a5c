"""Where the pseudonymisation key comes from: secret block, environment, file; never created in a deployment."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from survival_model.config import PrivacyParams
from survival_model.errors import ConfigError
from tasks import privacy

KEY = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def no_secret(name: str) -> object:
    raise AssertionError(f"no Secret block should be loaded, not {name!r}")


def test_precedence_secret_block_then_environment_then_file(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_text(KEY + "\n")
    from_file = privacy.resolve_key(PrivacyParams(key_file=path), deployment=True, environ={},
                                    load_secret=no_secret)
    assert from_file.key == KEY.encode() and from_file.source == f"the key file {path}"
    env = {"SURVIVAL_MODEL_PSEUDONYM_KEY": OTHER}
    from_env = privacy.resolve_key(PrivacyParams(key_file=path), deployment=True, environ=env, load_secret=no_secret)
    assert from_env.key == OTHER.encode() and "SURVIVAL_MODEL_PSEUDONYM_KEY" in from_env.source
    blank = privacy.resolve_key(PrivacyParams(key_file=path), deployment=True,
                                environ={"SURVIVAL_MODEL_PSEUDONYM_KEY": " "}, load_secret=no_secret)
    assert blank.key == KEY.encode()  # a blank variable is not a key
    secrets = {"pseudonym-key": "  a-secret-key-from-prefect-123 "}
    from_block = privacy.resolve_key(PrivacyParams(key_file=path, key_secret_block="pseudonym-key"), deployment=True,
                                     environ=env, load_secret=secrets.__getitem__)
    assert from_block.key == b"a-secret-key-from-prefect-123" and "'pseudonym-key'" in from_block.source
    # the same text from any source is the same key, so the same ids
    assert privacy.pseudonymiser(PrivacyParams(key_file=path), deployment=False, environ={}).fingerprint == \
        privacy.pseudonymiser(PrivacyParams(key_file=tmp_path / "none"), deployment=False,
                              environ={"SURVIVAL_MODEL_PSEUDONYM_KEY": KEY}).fingerprint


def test_a_named_secret_block_must_exist_and_hold_a_string(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_text(KEY)
    params = PrivacyParams(key_file=path, key_secret_block="missing-block")

    def missing(name: str) -> object:
        raise ConfigError(f"privacy.key_secret_block: the Prefect Secret block {name!r} cannot be loaded")

    with pytest.raises(ConfigError, match="'missing-block' cannot be loaded"):  # no silent fall-back to the file
        privacy.resolve_key(params, deployment=False, environ={}, load_secret=missing)
    with pytest.raises(ConfigError, match="must hold the key as a string"):
        privacy.resolve_key(params, deployment=False, environ={}, load_secret=lambda name: {"key": KEY})


def test_a_missing_key_is_created_only_for_a_local_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys" / "pseudonym.key"
    params = PrivacyParams(key_file=path)
    for deployment, params_used, why in [(True, params, "from a Prefect deployment"),
                                         (False, params.model_copy(update={"create_key_if_missing": False}),
                                          "create_key_if_missing is false")]:
        with pytest.raises(ConfigError) as error:
            privacy.pseudonymiser(params_used, deployment=deployment, environ={})
        message = str(error.value)
        assert why in message and "SURVIVAL_MODEL_PSEUDONYM_KEY (not set)" in message and str(path) in message
        assert "privacy.key_secret_block" in message and not path.exists()
    with caplog.at_level(logging.INFO, logger="tasks.privacy"):
        created = privacy.pseudonymiser(params, deployment=False, environ={})
    assert path.is_file() and "created a new random one" in caplog.text
    key = path.read_bytes().strip()
    assert key.decode() not in caplog.text and created.fingerprint in caplog.text  # the fingerprint, never the key
    assert privacy.pseudonymiser(params, deployment=True, environ={}).fingerprint == created.fingerprint


def test_a_run_from_a_deployment_is_detected_and_never_creates_a_key(tmp_path: Path) -> None:
    from uuid import uuid4

    from prefect.context import _deployment_id  # what Prefect's engine sets for a deployment's flow run

    assert privacy.in_deployment() is False  # outside a flow run
    token = _deployment_id.set(uuid4())
    try:
        assert privacy.in_deployment() is True
        with pytest.raises(ConfigError, match="from a Prefect deployment"):
            privacy.pseudonymiser(PrivacyParams(key_file=tmp_path / "pseudonym.key"), environ={})
    finally:
        _deployment_id.reset(token)
    assert not (tmp_path / "pseudonym.key").exists()


def test_check_key_available_never_creates_a_key(tmp_path: Path) -> None:
    params = PrivacyParams(key_file=tmp_path / "pseudonym.key")
    with pytest.raises(ConfigError, match="from a Prefect deployment"):
        privacy.check_key_available(params, environ={})
    assert not (tmp_path / "pseudonym.key").exists()
    assert "SURVIVAL_MODEL_PSEUDONYM_KEY" in privacy.check_key_available(
        params, environ={"SURVIVAL_MODEL_PSEUDONYM_KEY": KEY})


# the key file: created whole or not at all


def test_a_creation_interrupted_while_writing_leaves_no_key_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from survival_model.ingest.privacy import load_or_create_key

    path = tmp_path / "keys" / "pseudonym.key"
    real_write = os.write

    def killed(fd: int, data: bytes) -> int:  # the process dies while it writes the key (65 bytes: hex + newline)
        if len(data) == 65:
            raise OSError("killed while writing the key")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", killed)
    with pytest.raises(OSError, match="killed while writing"):
        load_or_create_key(path, create=True)
    monkeypatch.undo()
    assert not path.exists()  # not an empty key file that every later run refuses ("fewer than 16 bytes")
    assert list(path.parent.iterdir()) == []  # the temporary file removed
    created = load_or_create_key(path, create=True)  # the next run creates it
    assert path.read_bytes() == created + b"\n" and path.stat().st_mode & 0o777 == 0o600


def test_a_key_created_concurrently_is_the_one_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from survival_model.ingest.privacy import load_or_create_key

    path = tmp_path / "pseudonym.key"
    real_link = os.link
    linked: list[Path] = []

    def another_run_first(source: str | Path, target: str | Path) -> None:
        Path(target).write_text(OTHER + "\n")  # another first run created it between our check and our link
        linked.append(Path(source))
        real_link(source, target)

    monkeypatch.setattr(os, "link", another_run_first)
    assert load_or_create_key(path, create=True) == OTHER.encode()
    assert linked and path.read_text() == OTHER + "\n"
    assert list(tmp_path.iterdir()) == [path]  # the temporary file removed


# the Secret block's value as stored: the same text as from a file or the environment


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("text", ['"' + KEY + '"', "12345678901234567890123456789012"], ids=["quoted", "numeric"])
def test_a_secret_block_gives_the_key_text_as_stored(text: str, tmp_path: Path) -> None:
    from prefect.blocks.system import Secret

    name = "test-privacy-key-" + ("quoted" if text.startswith('"') else "numeric")
    Secret(value=text).save(name, overwrite=True)
    assert privacy.load_secret_block(name) == text  # Secret.get() parses JSON: the quotes lost, or an int
    path = tmp_path / "pseudonym.key"
    path.write_text(text + "\n")
    from_block = privacy.resolve_key(PrivacyParams(key_file=tmp_path / "none", key_secret_block=name),
                                     deployment=True, environ={})
    from_file = privacy.resolve_key(PrivacyParams(key_file=path), deployment=True, environ={})
    assert from_block.key == from_file.key == text.encode()
