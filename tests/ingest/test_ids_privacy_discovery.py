"""Id normalisation, pseudonymisation and case discovery."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from survival_model.config import ImageSource, PrivacyParams
from survival_model.errors import ConfigError, DataSourceError
from survival_model.ingest.discovery import discover_cases
from survival_model.ingest.ids import normalise_id
from survival_model.ingest.privacy import Pseudonymiser, key_from_text, load_or_create_key


@pytest.mark.parametrize(
    ("raw", "steps", "expected"),
    [
        ("010005", ["strip", "strip_leading_zeros"], "10005"),
        (10005.0, ["strip", "int_like"], "10005"),
        ("10005.0", ["int_like"], "10005"),
        (" C-017 ", ["strip", "digits_only", "strip_leading_zeros"], "17"),
        ("P0000", ["digits_only", "strip_leading_zeros"], "0"),
        ("abc", ["upper"], "ABC"),
        (float("nan"), ["strip"], None),
        ("   ", ["strip"], None),
        (None, ["strip"], None),
        ("Mu\u0308ller-07", [], "M\u00fcller-07"),  # a folder name written NFD (macOS) meets its NFC table id
        ("M\u00fcller-07", [], "M\u00fcller-07"),
    ],
)
def test_normalise_id(raw: object, steps: list, expected: str | None) -> None:
    assert normalise_id(raw, steps) == expected


def test_pseudonyms_are_stable_keyed_and_site_scoped() -> None:
    a, b = Pseudonymiser(b"a" * 32), Pseudonymiser(b"b" * 32)
    assert a.case_id("site_a", "42") == a.case_id("site_a", "42")
    assert a.case_id("site_a", "42") != b.case_id("site_a", "42")
    assert a.case_id("site_a", "42") != a.case_id("site_b", "42")
    assert a.case_id("site_a", "42").startswith("site_a-") and len(a.case_id("site_a", "42")) == len("site_a-") + 12
    assert "a" * 32 not in repr(a) and a.fingerprint != b.fingerprint
    with pytest.raises(ConfigError, match="too short"):
        Pseudonymiser(b"short")


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "pseudonym.key"
    with pytest.raises(ConfigError, match="not found"):
        load_or_create_key(path, create=False)
    first = Pseudonymiser(load_or_create_key(path, create=True))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Pseudonymiser(load_or_create_key(path, create=False)).fingerprint == first.fingerprint
    path.write_bytes(b"tiny")
    with pytest.raises(ConfigError, match="fewer than 16 bytes"):
        load_or_create_key(path, create=True)


def test_the_same_key_text_is_the_same_key_from_any_source_and_the_library_reads_no_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "0123456789abcdef0123456789abcdef"
    (tmp_path / "key").write_text(text + "\n")
    assert key_from_text(f"  {text}\n", "a secret") == load_or_create_key(tmp_path / "key", create=False)
    with pytest.raises(ConfigError, match="key from the environment variable X holds fewer than 16 bytes"):
        key_from_text("short", "the environment variable X")
    monkeypatch.setenv("SURVIVAL_MODEL_PSEUDONYM_KEY", "z" * 32)  # the library ignores it: the flows read it
    assert Pseudonymiser(load_or_create_key(tmp_path / "key", create=False)).case_id("s", "1") == \
        Pseudonymiser(text.encode()).case_id("s", "1")
    assert PrivacyParams().key_env == "SURVIVAL_MODEL_PSEUDONYM_KEY" and PrivacyParams().key_secret_block is None
    with pytest.raises(ValueError, match="must be a name or null"):
        PrivacyParams(key_env=" ")


def test_discovery_finds_cases_with_missing_files_and_ignores_junk(tmp_path: Path) -> None:
    for case in ("A1", "A2"):
        (tmp_path / case).mkdir()
        (tmp_path / case / f"{case}-t1c.nii.gz").write_bytes(b"x")
    (tmp_path / "A1" / "A1-seg.nii.gz").write_bytes(b"x")
    (tmp_path / "A2" / "A1-t2w.nii.gz").write_bytes(b"x")  # wrong case id in the name: not A2's
    (tmp_path / "A1" / ".A1-t2w.nii.gz").write_bytes(b"x")  # hidden temporary file
    source = ImageSource(layout="pattern", root=tmp_path,
                         sequences={"t1c": "{case}/{case}-t1c.nii.gz", "t2w": "{case}/{case}-t2w.nii.gz"},
                         mask="{case}/{case}-seg.nii.gz")
    cases = {c.source_id: c for c in discover_cases("s", source)}
    assert set(cases) == {"A1", "A2"}
    assert cases["A1"].mask is not None and cases["A2"].mask is None
    assert cases["A1"].sequences["t2w"] is None and cases["A2"].sequences["t2w"] is None
    digests = cases["A1"].content_digests()
    assert digests["t2w"] is None and digests["t1c"] is not None


def test_discovery_of_dicom_folders_and_missing_root(tmp_path: Path) -> None:
    (tmp_path / "C001" / "T1C").mkdir(parents=True)
    (tmp_path / "C001" / "T1C" / "IM0001.dcm").write_bytes(b"x")
    source = ImageSource(layout="dicom", root=tmp_path, sequences={"t1c": "{case}/T1C"}, mask="{case}/seg.nii.gz")
    (case,) = discover_cases("c", source)
    assert case.sequences["t1c"] == tmp_path / "C001" / "T1C" and case.mask is None
    with pytest.raises(DataSourceError, match="does not exist"):
        discover_cases("c", source.model_copy(update={"root": tmp_path / "nope"}))
