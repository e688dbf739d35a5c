"""The package's pieces without a trained network: the input conversion, the survival curves from the packaged
Breslow baseline, the trusted-type check of skops files, and bad packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator

from survival_model.config import TabularParams
from survival_model.imageio import write_json
from survival_model.models.tabular import build_tabular_pipeline, survival_target
from survival_model.registry.package import (
    IMAGE_COLUMN,
    PackagedModel,
    PackageError,
    _skops_dump,
    _skops_load,
    breslow,
    model_input,
    read_info,
)

INFO: dict[str, Any] = {
    "format": 2, "uses_images": True, "horizons_months": [6, 12], "risk_thresholds": [-0.5, 0.5],
    "input_schema": [{"name": "age", "kind": "number"}, {"name": "sex", "kind": "text"},
                     {"name": "egfr_mutant", "kind": "number"}],
    "breslow": {"times": [100.0, 200.0, 400.0], "cumulative_hazard": [0.2, 0.7, 1.5]},
}


def table() -> pd.DataFrame:
    return pd.DataFrame({"site": ["a", "a"], "case_id": ["p1", "p2"], "age": [60.0, None],
                         "sex": ["male", None], "egfr_mutant": pd.array([True, None], dtype="boolean")})


def test_the_model_input_has_plain_types_and_image_paths() -> None:
    frame = model_input(INFO, table(), {"p1": Path("/x/p1.npy")})
    assert list(frame.columns) == ["case_id", "age", "sex", "egfr_mutant", IMAGE_COLUMN]
    assert frame["egfr_mutant"].tolist()[0] == 1.0 and np.isnan(frame["egfr_mutant"].tolist()[1])
    assert frame["sex"][0] == "male" and pd.isna(frame["sex"][1])
    assert frame[IMAGE_COLUMN][0] == "/x/p1.npy" and pd.isna(frame[IMAGE_COLUMN][1])
    with pytest.raises(PackageError, match=r"needs column\(s\) \['kps'\]"):
        model_input({**INFO, "input_schema": [{"name": "kps", "kind": "number"}]}, table())


def test_survival_median_and_interval_follow_the_baseline() -> None:
    model = PackagedModel(Path(), INFO, [])
    s = model.survival(np.array([0.0, np.log(2)]), np.array([50, 100, 300, 1000]))
    np.testing.assert_allclose(s[0], np.exp(-np.array([0, 0.2, 0.7, 1.5])))  # flat after the last time
    np.testing.assert_allclose(s[1], np.exp(-2 * np.array([0, 0.2, 0.7, 1.5])))
    # S <= 0.5 needs H0 >= ln 2 / exp(risk): 0.693 -> 200 days at risk 0, 0.347 -> 200 at risk ln 2
    np.testing.assert_allclose(model.crossing(np.array([0.0, np.log(2), -3.0]), 0.5), [200, 200, np.nan])
    np.testing.assert_allclose(model.crossing(np.array([0.0]), 0.75), [200])  # H0 >= 0.288


def test_the_breslow_baseline_is_scikit_survivals() -> None:
    rng = np.random.default_rng(0)
    risk, time = rng.normal(size=40), rng.uniform(10, 500, 40).round()
    event = rng.uniform(size=40) < 0.7
    base = breslow(risk, time, event)
    assert base["times"] == sorted(base["times"]) and np.all(np.diff(base["cumulative_hazard"]) >= 0)


class Untrusted(BaseEstimator):  # type: ignore[misc]
    def fit(self, X: Any, y: Any = None) -> Untrusted:
        return self


def test_skops_files_load_only_trusted_types(tmp_path: Path) -> None:
    frame = pd.DataFrame({"case_id": [f"p{i}" for i in range(8)], "age": np.arange(8) + 50.0,
                          "sex": ["m", "f"] * 4, "vol_wt_mm3": np.arange(8) * 100.0,
                          "time_days": np.arange(8) * 30.0 + 10, "event": [1, 0] * 4})
    pipeline = build_tabular_pipeline(TabularParams(clinical=["age", "sex"], volumetric=True, scores=[]))
    pipeline.fit(frame, survival_target(frame))
    _skops_dump(pipeline, tmp_path / "ok.skops")
    loaded = _skops_load(tmp_path / "ok.skops")
    np.testing.assert_array_equal(loaded.transform(frame), pipeline.transform(frame))
    _skops_dump(Untrusted(), tmp_path / "bad.skops")
    with pytest.raises(PackageError, match="refusing to load untrusted type"):
        _skops_load(tmp_path / "bad.skops")


def test_bad_packages_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a model package"):
        read_info(tmp_path)
    write_json({**INFO, "format": 99}, tmp_path / "package.json")
    with pytest.raises(PackageError, match="format 99 is not 3: it was built by another version"):
        PackagedModel.load(tmp_path)


def test_only_rows_with_an_image_input_are_scorable() -> None:
    from survival_model.registry.package import IMAGE_COLUMN, scorable_rows

    frame = pd.DataFrame({"case_id": ["a", "b", "c"], IMAGE_COLUMN: ["a.npy", None, "c.npy"]})
    assert list(scorable_rows(frame)["case_id"]) == ["a", "c"]
    tabular_only = pd.DataFrame({"case_id": ["a", "b"]})
    assert list(scorable_rows(tabular_only)["case_id"]) == ["a", "b"]


def test_a_package_is_keyed_by_its_training_run_and_what_it_adds(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from survival_model.config import load_params
    from survival_model.registry.package import BuildPackage
    from tests.conftest import REPO

    run = tmp_path / "training" / "runs" / "0123456789abcdef"
    write_json({"key": "0123456789abcdef" + "0" * 48}, run / "result.json")
    trained, table = SimpleNamespace(folder=run), SimpleNamespace(folder=tmp_path / "features" / "table" / "t")
    params = load_params(REPO / "params.yaml", {"work_dir": str(tmp_path)})
    stage = BuildPackage.of(trained, table, params, "data", "key-print")  # type: ignore[arg-type]
    assert stage.folder() == tmp_path / "registry" / "packages" / stage.key()[:16]
    assert stage.outputs(stage.folder()) == [stage.folder() / "package.json"] and stage.load(stage.folder()) is None
    # what the training run's key decides (the data, the pseudonym key) does not change it; what the package adds does
    assert BuildPackage.of(trained, table, params, "other data").key() == stage.key()  # type: ignore[arg-type]
    more_groups = params.model_copy(update={"registry": params.registry.model_copy(update={"risk_groups": 4})})
    assert BuildPackage.of(trained, table, more_groups, "data").key() != stage.key()  # type: ignore[arg-type]
    write_json({"key": "f" * 64}, run / "result.json")
    assert BuildPackage.of(trained, table, params, "data").key() != stage.key()  # type: ignore[arg-type]
