"""pyradiomics features: a fixed column set, NaN for absent regions, agreement with volumes and with
pyradiomics run on the full images; the settings digest and version."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from survival_model.config import FeaturesParams, RadiomicsParams
from survival_model.errors import ConfigError
from survival_model.features.radiomics import (
    _SHAPE_CLASSES,
    _column,
    _plan_for,
    pyradiomics_version,
    radiomics_columns,
    radiomics_features,
    radiomics_settings_digest,
    resolve_params_file,
)
from survival_model.features.volumetric import volumetric_features

SPACING = (1.2, 1.2, 1.2)
PARAMS = RadiomicsParams(regions=["wt", "tc", "netc"], sequences=["t1c", "t2f"])


def write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((-20.0, 5.0, 3.0))
    sitk.WriteImage(image, str(path))
    return path


def lesion_labels() -> np.ndarray:
    """A spherical metastasis: NETC core, ET shell, SNFH around (canonical labels), off-centre in a
    box with a different size along each axis (so a crop mixing up axes is caught)."""
    z, y, x = np.mgrid[:30, :38, :46]
    r = np.sqrt((z - 14.0) ** 2 + (y - 20.5) ** 2 + (x - 25.3) ** 2)
    seg = np.zeros(r.shape, np.uint8)
    seg[r <= 11] = 2
    seg[r <= 7] = 3
    seg[r <= 3.5] = 1
    return seg


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images (z-scored-like noise with region contrasts) and two label maps: with and without NETC."""
    folder = tmp_path_factory.mktemp("radiomics")
    seg = lesion_labels()
    rng = np.random.default_rng(11)
    files = {}
    for i, seq in enumerate(("t1c", "t2f")):
        array = rng.normal(0.0, 1.0, seg.shape) + np.choose(seg, [0.0, -1.0 + i, 1.5 - i, 2.5 + i])
        files[seq] = write(array.astype(np.float32), folder / f"{seq}.nii.gz")
    files["seg"] = write(seg, folder / "seg.nii.gz")
    no_netc = seg.copy()
    no_netc[no_netc == 1] = 3
    files["seg_no_netc"] = write(no_netc, folder / "seg_no_netc.nii.gz")
    return files


def images_of(case: dict[str, Path]) -> dict[str, Path]:
    return {"t1c": case["t1c"], "t2f": case["t2f"]}


def test_column_set_is_the_same_with_and_without_netc(case: dict[str, Path]) -> None:
    with_netc = radiomics_features(images_of(case), case["seg"], PARAMS)
    without = radiomics_features(images_of(case), case["seg_no_netc"], PARAMS)
    assert list(with_netc) == list(without) == radiomics_columns(PARAMS)
    netc = [c for c in with_netc if c.startswith("rad_netc_")]
    assert netc and all(math.isnan(without[c]) for c in netc)
    assert all(math.isfinite(with_netc[c]) for c in netc)
    others = [c for c in with_netc if not c.startswith("rad_netc_")]
    assert all(math.isfinite(without[c]) for c in others)
    assert all(math.isfinite(with_netc[c]) for c in others)


def test_column_names(case: dict[str, Path]) -> None:
    columns = radiomics_columns(RadiomicsParams())  # the repository default: wt, et x t1c, t2f
    assert "rad_wt_t1c_firstorder_mean" in columns
    assert "rad_et_t2f_glcm_contrast" in columns
    assert "rad_wt_shape_meshvolume" in columns
    assert not any("_shape_" in c and c.split("_")[2] in {"t1c", "t2f"} for c in columns)  # shape once per region
    assert not any("diagnostics" in c for c in columns)
    assert all(c == c.lower() and c.startswith("rad_") for c in columns)
    assert len(columns) == len(set(columns))
    assert _column("log-sigma-1-0-mm-3D_glcm_Idmn", "rad_wt_t1c") == "rad_wt_t1c_log_sigma_1_0_mm_3d_glcm_idmn"


def test_shape_volume_agrees_with_volumetric_features(case: dict[str, Path]) -> None:
    rad = radiomics_features(images_of(case), case["seg"], PARAMS)
    vol = volumetric_features(case["seg"], FeaturesParams())
    for region in ("wt", "tc", "netc"):
        assert rad[f"rad_{region}_shape_voxelvolume"] == pytest.approx(vol[f"vol_{region}_mm3"], rel=1e-9)
        assert rad[f"rad_{region}_shape_meshvolume"] == pytest.approx(vol[f"vol_{region}_mm3"], rel=0.05)
    assert rad["rad_wt_shape_meshvolume"] == pytest.approx(vol["vol_wt_mm3"], rel=0.01)


def test_cropping_gives_the_same_features_as_pyradiomics_on_the_full_images(case: dict[str, Path]) -> None:
    from radiomics import featureextractor

    params = RadiomicsParams(regions=["tc"], sequences=["t2f"])
    ours = radiomics_features(images_of(case), case["seg"], params)
    extractor = featureextractor.RadiomicsFeatureExtractor(str(resolve_params_file(params.params_file)))
    seg = sitk.ReadImage(str(case["seg"]))
    mask = sitk.Cast((seg == 1) | (seg == 3), sitk.sitkUInt8)
    full = extractor.execute(sitk.ReadImage(str(case["t2f"])), mask, label=1)
    reference = {}
    for key, value in full.items():
        if key.startswith("diagnostics_"):
            continue
        shape = key.split("_")[1] in _SHAPE_CLASSES
        reference["rad_tc_" + key.split("_", 1)[1].lower() if shape else _column(key, "rad_tc_t2f")] = float(value)
    assert set(reference) == set(ours)
    for column, value in reference.items():
        assert ours[column] == pytest.approx(value, rel=1e-9, abs=1e-12), column


def test_a_region_too_small_for_pyradiomics_gives_nan(tmp_path: Path, case: dict[str, Path]) -> None:
    seg = lesion_labels()
    seg[seg == 3] = 2
    seg[seg == 1] = 2
    seg[14, 20, 25] = 3  # one ET voxel: pyradiomics refuses single-voxel regions
    path = write(seg, tmp_path / "seg.nii.gz")
    out = radiomics_features(images_of(case), path, RadiomicsParams(regions=["et", "wt"], sequences=["t1c"]))
    assert all(math.isnan(v) for k, v in out.items() if k.startswith("rad_et_"))
    assert all(math.isfinite(v) for k, v in out.items() if k.startswith("rad_wt_"))


def test_a_missing_sequence_gives_nan_columns(case: dict[str, Path]) -> None:
    out = radiomics_features({"t1c": case["t1c"]}, case["seg"], PARAMS)
    assert list(out) == radiomics_columns(PARAMS)
    assert all(math.isnan(v) for k, v in out.items() if "_t2f_" in k)
    assert all(math.isfinite(v) for k, v in out.items() if "_t1c_" in k)


def test_version_and_settings_digest(tmp_path: Path) -> None:
    import radiomics

    assert pyradiomics_version() == radiomics.__version__.removeprefix("v")
    assert pyradiomics_version()[0].isdigit()
    default = RadiomicsParams()
    digest = radiomics_settings_digest(default)
    assert digest == radiomics_settings_digest(RadiomicsParams())
    assert digest != radiomics_settings_digest(RadiomicsParams(regions=["wt"]))
    assert digest != radiomics_settings_digest(RadiomicsParams(sequences=["t1c"]))
    copy = tmp_path / "radiomics.yaml"
    shutil.copy(resolve_params_file(default.params_file), copy)
    assert radiomics_settings_digest(RadiomicsParams(params_file=copy)) == digest  # the bytes, not the path
    copy.write_text(copy.read_text().replace("binWidth: 0.25", "binWidth: 0.5"))
    assert radiomics_settings_digest(RadiomicsParams(params_file=copy)) != digest


def test_settings_come_from_the_yaml(tmp_path: Path, case: dict[str, Path]) -> None:
    yaml_file = tmp_path / "small.yaml"
    yaml_file.write_text("imageType:\n  Original: {}\nfeatureClass:\n  firstorder: [Mean, Entropy]\n"
                         "setting:\n  binWidth: 0.5\n  additionalInfo: false\n")
    params = RadiomicsParams(params_file=yaml_file, regions=["wt"], sequences=["t1c"])
    assert radiomics_columns(params) == ["rad_wt_t1c_firstorder_mean", "rad_wt_t1c_firstorder_entropy"]
    assert _plan_for(params).settings["binWidth"] == 0.5
    out = radiomics_features(images_of(case), case["seg"], params)
    wide = radiomics_features(images_of(case), case["seg"], params.model_copy(update={
        "params_file": resolve_params_file(RadiomicsParams().params_file)}))
    assert out["rad_wt_t1c_firstorder_mean"] == pytest.approx(wide["rad_wt_t1c_firstorder_mean"])
    assert out["rad_wt_t1c_firstorder_entropy"] < wide["rad_wt_t1c_firstorder_entropy"]  # wider bins
    assert logging.getLogger("radiomics").level == logging.WARNING


def test_bad_parameter_files_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="radiomics parameter file not found"):
        radiomics_columns(RadiomicsParams(params_file=tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("featureClass:\n  notaclass:\nsetting:\n  binWidth: 0.25\n")
    with pytest.raises(ConfigError, match="not valid for pyradiomics"):
        radiomics_columns(RadiomicsParams(params_file=bad))
    monkeypatch.chdir(tmp_path)  # the default relative path is found from any directory
    assert resolve_params_file(RadiomicsParams().params_file).name == "radiomics.yaml"
