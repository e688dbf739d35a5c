"""params.yaml parsing: validated, typed, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from survival_model.config import (
    LABEL_SCHEMES,
    REALISTIC_OVERLAY,
    Institution,
    load_params,
    load_services,
    overlay_overrides,
    parse_override,
    parse_params,
)
from survival_model.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def test_the_repository_params_file_is_valid_and_paths_are_absolute() -> None:
    params = load_params(REPO / "params.yaml")
    assert set(params.institutions) == {"site_a", "site_b", "site_c"}
    assert params.work_dir == REPO / "work"
    assert params.institutions["site_b"].images.root == REPO / "data" / "synthetic" / "site_b" / "images"
    assert params.mlflow_uri == f"sqlite:///{REPO / 'work' / 'mlflow' / 'mlflow.db'}"
    assert params.institutions["site_b"].label_map == {0: 0, 1: 1, 2: 2, 4: 3}
    # brats layout fills in the BraTS-METS file names
    assert params.institutions["site_a"].images.sequences["t1c"] == "{case}/{case}-t1c.nii.gz"
    assert params.institutions["site_a"].images.mask == "{case}/{case}-seg.nii.gz"


def test_unknown_key_is_an_error_that_names_it(tmp_path: Path) -> None:
    data = repo_params()
    data.setdefault("ingest", {})["grid_tolerence_mm"] = 1.0
    with pytest.raises(ConfigError, match=r"ingest\.grid_tolerence_mm: unknown key"):
        parse_params(data, base_dir=tmp_path)


def test_bad_value_is_an_error_that_names_the_key_and_value(tmp_path: Path) -> None:
    data = repo_params()
    data["institutions"]["site_b"]["clinical"]["survival"]["time_unit"] = "fortnights"
    with pytest.raises(ConfigError, match=r"institutions\.site_b\.clinical\.survival\.duration\.time_unit.*fortnights"):
        parse_params(data, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("orchestration", "max_workers"), 0, r"orchestration\.max_workers"),
        (("ingest", "age_range"), [90, 20], r"age_range: lower bound"),
        (("institutions", "site_a", "labels"), "brats_2099", r"unknown label scheme 'brats_2099'"),
        (("institutions", "site_a", "images", "mask_reference"), "t1x", r"mask_reference"),
        (("synthetic", "patients"), {"site_z": 3}, r"synthetic sites must be among"),
        (("training", "fit", "chunk_size"), 1, r"image_standardise standardises .*fit\.chunk_size must be at least 2"),
    ],
)
def test_invalid_settings(tmp_path: Path, path: tuple[str, ...], value: object, message: str) -> None:
    data = repo_params()
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        parse_params(data, base_dir=tmp_path)


def test_pattern_without_case_placeholder_is_rejected(tmp_path: Path) -> None:
    data = repo_params()
    data["institutions"]["site_b"]["images"]["sequences"]["t1c"] = "T1GD.nrrd"
    with pytest.raises(ConfigError, match=r"pattern for 't1c' must contain '\{case\}'"):
        parse_params(data, base_dir=tmp_path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("work_dir: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_params(bad)


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml", {"synthetic.shape": [32, 32, 20], "work_dir": str(tmp_path)})
    assert params.synthetic.shape == (32, 32, 20)
    assert params.work_dir == tmp_path
    with pytest.raises(ConfigError, match=r"synthetic\.shape"):
        load_params(REPO / "params.yaml", {"synthetic.shape": "big"})
    assert parse_override("synthetic.patients={site_a: 3}") == ("synthetic.patients", {"site_a": 3})
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        parse_override("nonsense")


def test_custom_label_mapping_and_presets() -> None:
    inst = Institution.model_validate({
        "images": {"layout": "brats", "root": "/x"},
        "labels": {1: "netc", 2: "snfh", 4: "et", 5: "background"},
        "clinical": {"path": "/c.csv", "id_column": "id",
                     "survival": {"kind": "duration", "time_column": "t", "event_column": "e"}},
    })
    assert inst.label_map == {0: 0, 1: 1, 2: 2, 4: 3, 5: 0}
    assert LABEL_SCHEMES["brats2013"] == {1: "netc", 2: "snfh", 3: "netc", 4: "et"}


def test_services_file_of_the_repository_is_valid() -> None:
    spec = load_services(REPO / "infra" / "local" / "services.yaml")
    assert set(spec.services) == {"prefect", "mlflow"}
    assert "{prefect_port}" in spec.services["prefect"].health_url


def test_the_new_patients_example_declares_sources_without_outcomes() -> None:
    from tests.conftest import REPO

    params = load_params(REPO / "examples" / "new_patients.yaml")
    training = load_params(REPO / "params.yaml")
    assert params.work_dir == training.work_dir  # the registry and the cached stages are the training run's
    assert set(params.institutions) == set(training.institutions)
    assert all(inst.clinical.survival is None for inst in params.institutions.values())
    assert params.registry.model_name == training.registry.model_name


def test_the_realistic_preset_is_an_overlay_of_the_keys_it_changes() -> None:
    pairs = overlay_overrides(REALISTIC_OVERLAY)
    assert pairs == {
        "synthetic.shape": [240, 240, 155], "synthetic.spacing_mm": 1.0, "preprocess.target_spacing_mm": [1, 1, 1],
        "preprocess.compress_images": True, "preprocess.n4.max_shrunk_spacing_mm": 8.0,
        "preprocess.n4.iterations": [30, 30, 30], "preprocess.n4.control_points": 4,
        "preprocess.registration.spacing_mm": 2.0, "preprocess.registration.max_samples": 20000,
        "ingest.compress_images": True,
    }
    base, realistic = load_params(REPO / "params.yaml"), load_params(REPO / "params.yaml", pairs)
    assert realistic.preprocess.target_spacing_mm == (1.0, 1.0, 1.0) and realistic.synthetic.spacing_mm == 1.0
    assert realistic.training == base.training and realistic.synthetic.patients == base.synthetic.patients


def test_an_overlay_changes_one_key_of_a_section_and_names_a_bad_one(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("preprocess:\n  n4:\n    control_points: 5\n", encoding="utf-8")
    assert overlay_overrides(overlay) == {"preprocess.n4.control_points": 5}
    base, laid = load_params(REPO / "params.yaml"), load_params(REPO / "params.yaml", overlay_overrides(overlay))
    assert laid.preprocess.n4.control_points == 5 and laid.preprocess.n4.iterations == base.preprocess.n4.iterations
    overlay.write_text("preprocess:\n  n4:\n    controlpoints: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"controlpoints"):
        load_params(REPO / "params.yaml", overlay_overrides(overlay))
    overlay.write_text("- preprocess\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the top level must be a mapping of sections"):
        overlay_overrides(overlay)
    with pytest.raises(ConfigError, match="overlay file not found"):
        overlay_overrides(tmp_path / "missing.yaml")


def test_a_file_declaring_only_its_institutions_runs_with_the_main_commands_settings(tmp_path: Path) -> None:
    """Defaults live in the code: params.yaml sets only its paths and the ground truth, so a params file with
    only the institutions gets exactly the main command's preprocessing, network and workers."""
    only = tmp_path / "only.yaml"
    only.write_text(yaml.safe_dump({"institutions": repo_params()["institutions"]}), encoding="utf-8")
    main = load_params(REPO / "params.yaml").model_dump(mode="json")
    mine = load_params(only).model_dump(mode="json")
    for key in ("preprocess", "features", "training", "orchestration", "ingest", "registry"):
        assert mine[key] == main[key], key
    assert {k for k in main if main[k] != mine[k]} <= {"work_dir", "synthetic", "evaluation", "institutions"}
    assert main["preprocess"]["target_spacing_mm"] == [2.5, 2.5, 2.5]
    assert main["training"]["network"]["backbone"] == "mobilenetv3_small_050"


def test_institutions_from_a_catalog_file_resolve_their_paths_against_it(tmp_path: Path) -> None:
    catalog = tmp_path / "sites" / "institutions.yaml"
    catalog.parent.mkdir()
    catalog.write_text(yaml.safe_dump(repo_params()["institutions"]), encoding="utf-8")
    params_file = tmp_path / "params.yaml"
    params_file.write_text("work_dir: w\ninstitutions: sites/institutions.yaml\n", encoding="utf-8")
    params = load_params(params_file, {"institutions.site_a.labels": "brats_mets"})
    assert params.institutions["site_b"].images.root == tmp_path / "sites" / "data" / "synthetic" / "site_b" / "images"
    assert params.work_dir == tmp_path / "w"
    catalog.write_text("site_a: {images: {layout: brats, root: x}, flavour: 1}\n", encoding="utf-8")
    expected = r"(?s)institutions from sites/institutions.yaml.*institutions\.site_a\.flavour: unknown key"
    with pytest.raises(ConfigError, match=expected):
        load_params(params_file)
    params_file.write_text("institutions: nowhere.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="institutions catalog not found"):
        load_params(params_file)


def test_every_path_setting_is_made_absolute_by_its_type() -> None:
    """No hand-kept list: every Path field at any depth is resolved (a new one cannot stay relative)."""
    params = load_params(REPO / "params.yaml", {"features.radiomics.params_file": "r.yaml",
                                                "training.network.pretrained_weights": "w.pt"})
    seen: list[Path] = []

    def walk(node: object) -> None:
        if isinstance(node, Path):
            seen.append(node)
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name))
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value)

    walk(params)
    assert len(seen) >= 12 and all(p.is_absolute() for p in seen)
    assert params.training.network.pretrained_weights == REPO / "w.pt"
