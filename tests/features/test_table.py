"""One patient's feature row (on a rendered phantom) and the cohort's feature table."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from survival_model.config import SEQUENCES, FeaturesParams, RadiomicsParams
from survival_model.features.radiomics import radiomics_columns, radiomics_features
from survival_model.features.table import feature_row, feature_table, table_schema
from survival_model.features.volumetric import (
    VOLUMETRIC_COLUMNS,
    intensity_columns,
    intensity_features,
    volumetric_features,
)
from survival_model.imageio import write_parquet
from survival_model.preprocess import ops
from survival_model.synthetic.phantom import Grid, brain_mask, render_case, sample_head, sample_lesions


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A preprocessed-like patient: phantom at 3 mm, images z-scored in the brain and 0 outside."""
    folder = tmp_path_factory.mktemp("patient")
    rng = np.random.default_rng(4)
    head = sample_head(rng)
    lesions = sample_lesions(head, 3, rng, radius_median_mm=10.0)
    grid = Grid.centred((64, 64, 44), (3.0, 3.0, 3.0))
    case = render_case(head, lesions, grid, seed=4, skull_stripped=True)
    brain = brain_mask(head, grid)

    def write(array: np.ndarray, name: str) -> Path:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(grid.spacing)
        image.SetOrigin(grid.origin)
        sitk.WriteImage(image, str(folder / name))
        return folder / name

    files = {}
    for seq in SEQUENCES:
        values = case[seq].astype(np.float64)
        z = np.zeros(values.shape, np.float32)
        z[brain] = (values[brain] - values[brain].mean()) / values[brain].std()
        files[seq] = write(z, f"{seq}.nii.gz")
    files["seg"] = write(case["seg"], "seg.nii.gz")
    files["brain_mask"] = write(brain.astype(np.uint8), "brain_mask.nii.gz")
    return files


def images(patient: dict[str, Path]) -> dict[str, Path]:
    return {s: patient[s] for s in SEQUENCES}


def test_feature_row_holds_every_family_in_order(patient: dict[str, Path]) -> None:
    params = FeaturesParams()
    row = feature_row("case-1", "site_a", images(patient), patient["seg"], params)
    keys = list(row)
    assert keys[:2] == ["site", "case_id"] and row["case_id"] == "case-1" and row["site"] == "site_a"
    expected = [*VOLUMETRIC_COLUMNS, *intensity_columns(params), *radiomics_columns(params.radiomics)]
    assert keys[2:] == expected
    assert all(isinstance(row[k], float) for k in expected)
    assert {k: row[k] for k in VOLUMETRIC_COLUMNS} == volumetric_features(patient["seg"], params)
    intensity = intensity_features(images(patient), patient["seg"], params)
    assert {k: row[k] for k in intensity} == pytest.approx(intensity, nan_ok=True)
    radiomics = radiomics_features(images(patient), patient["seg"], params.radiomics)
    assert {k: row[k] for k in radiomics} == pytest.approx(radiomics, nan_ok=True)
    assert row["vol_wt_mm3"] > 0 and row["vol_lesion_count"] >= 1
    assert math.isfinite(row["rad_wt_t1c_firstorder_mean"])
    assert row["int_et_t1c_mean"] > row["int_snfh_t1c_mean"]  # enhancing tumour is bright on t1c


def test_radiomics_can_be_switched_off(patient: dict[str, Path]) -> None:
    params = FeaturesParams(radiomics=RadiomicsParams(enabled=False), intensity_sequences=["t1c"])
    row = feature_row("case-1", "site_a", images(patient), patient["seg"], params)
    assert not any(k.startswith("rad_") for k in row)
    assert not any(k.startswith("int_") and "_t1c_" not in k for k in row)


def test_volumes_and_shape_come_from_the_native_label_map_intensities_and_texture_from_the_resampled(
    patient: dict[str, Path], tmp_path: Path
) -> None:
    seg = sitk.ReadImage(str(patient["seg"]))
    native = ops.resample_onto(seg, ops.target_grid(seg, (1.5, 1.5, 1.5), "LPS"), None, "nearest")
    array = sitk.GetArrayFromImage(native)
    array[2:5, 2:5, 2:5] = 3  # a 91 mm3 lesion only the native map has (lost by the coarse grid, say)
    drawn = sitk.GetImageFromArray(array)
    drawn.CopyInformation(native)
    native_path = tmp_path / "seg_native.nii.gz"
    sitk.WriteImage(drawn, str(native_path))
    params = FeaturesParams(radiomics=RadiomicsParams(regions=["wt"], sequences=["t1c"]), intensity_sequences=["t1c"])

    row = feature_row("case-1", "site_a", images(patient), patient["seg"], params, native_path)
    plain = feature_row("case-1", "site_a", images(patient), patient["seg"], params)

    assert {k: row[k] for k in VOLUMETRIC_COLUMNS} == volumetric_features(native_path, params)
    assert row["vol_lesion_count"] == plain["vol_lesion_count"] + 1
    assert row["vol_et_mm3"] == pytest.approx(np.count_nonzero(array == 3) * 1.5 ** 3)
    shape = {k: v for k, v in row.items() if k.startswith("rad_wt_shape_")}
    assert shape and shape == pytest.approx(
        {k: v for k, v in radiomics_features(images(patient), patient["seg"], params.radiomics, native_path).items()
         if k.startswith("rad_wt_shape_")})
    assert shape["rad_wt_shape_voxelvolume"] == pytest.approx(row["vol_wt_mm3"])
    assert shape["rad_wt_shape_voxelvolume"] != pytest.approx(plain["rad_wt_shape_voxelvolume"])
    same = [k for k in row if k.startswith(("int_", "rad_wt_t1c_"))]
    assert same and {k: row[k] for k in same} == pytest.approx({k: plain[k] for k in same}, nan_ok=True)


def rows() -> list[dict[str, Any]]:
    out = []
    for i, (site, case) in enumerate([("site_b", "b2"), ("site_a", "a9"), ("site_b", "b1")]):
        out.append({"site": site, "case_id": case, "vol_wt_mm3": 100.0 * (i + 1), "vol_lesion_count": i + 1,
                    "int_wt_t1c_mean": 0.5 * i, "rad_wt_t1c_firstorder_mean": float("nan") if i == 1 else 1.0 + i})
    return out


def clinical() -> pd.DataFrame:
    return pd.DataFrame({
        "event": [1, 0, 1, 1],
        "age": [61.0, 70.0, 55.0, 48.0],
        "case_id": pd.array(["a9", "b1", "b2", "c7"], dtype="string"),   # c7: no feature row (quarantined)
        "time_days": [120.0, 400.0, 35.0, 800.0],
        "site": pd.array(["site_a", "site_b", "site_b", "site_c"], dtype="string"),
        "primary": pd.array(["lung", "breast", "melanoma", "lung"], dtype="string"),
    })


def test_feature_table_joins_orders_and_types(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="survival_model.features.table"):
        table = feature_table(rows(), clinical())
    assert list(table.columns) == ["site", "case_id", "age", "primary", "time_days", "event",
                                   "vol_wt_mm3", "vol_lesion_count", "int_wt_t1c_mean", "rad_wt_t1c_firstorder_mean"]
    assert list(table["case_id"]) == ["a9", "b1", "b2"]   # sorted by site then case; c7 left out
    assert "1 patient(s) without features" in caplog.text
    b2 = table.set_index("case_id").loc["b2"]
    assert b2["age"] == 55.0 and b2["time_days"] == 35.0 and b2["vol_wt_mm3"] == 100.0
    assert math.isnan(table.set_index("case_id").loc["a9", "rad_wt_t1c_firstorder_mean"])
    schema = table_schema(table)
    assert list(schema) == list(table.columns)
    assert all(schema[c] == "float64" for c in table.columns if c.startswith(("vol_", "int_", "rad_")))
    assert schema["site"] == "string" and schema["case_id"] == "string" and schema["event"] == "int64"
    path = write_parquet(table, tmp_path / "features.parquet")
    assert table_schema(pd.read_parquet(path)) == schema


def test_feature_table_without_outcomes_for_prediction() -> None:
    table = feature_table(rows()[:1], clinical().drop(columns=["time_days", "event"]))
    assert list(table.columns)[:4] == ["site", "case_id", "age", "primary"]
    assert len(table) == 1


def test_feature_table_errors() -> None:
    with pytest.raises(ValueError, match=r"several feature rows for case\(s\) \['b2'\]"):
        feature_table([*rows(), rows()[0]], clinical())
    bad_site = rows()
    bad_site[0]["site"] = "site_a"
    with pytest.raises(ValueError, match=r"site differs .* \['b2'\]"):
        feature_table(bad_site, clinical())
    with pytest.raises(ValueError, match="neither ids nor features"):
        feature_table([{**rows()[0], "surprise": 1.0}], clinical())
    with pytest.raises(ValueError, match="several rows for case"):
        feature_table(rows(), pd.concat([clinical(), clinical().iloc[[0]]]))
    with pytest.raises(ValueError, match="no 'site' column"):
        feature_table(rows(), clinical().drop(columns="site"))


def test_rows_with_different_columns_are_aligned_with_nan(caplog: pytest.LogCaptureFixture) -> None:
    data = rows()
    del data[2]["int_wt_t1c_mean"]
    with caplog.at_level(logging.WARNING, logger="survival_model.features.table"):
        table = feature_table(data, clinical())
    assert math.isnan(table.set_index("case_id").loc["b1", "int_wt_t1c_mean"])
    assert "lacks 1 column" in caplog.text
