"""A fold trained into its content-keyed folder, reloaded for prediction, and the ensemble on the test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import EvaluationParams, TrainingParams
from survival_model.imageio import write_json
from survival_model.training import folds as folds_lib
from survival_model.training.splits import make_splits
from survival_model.training.stage import evaluate_ensemble, load_result, stage_key

TRAINING = TrainingParams.model_validate({
    "splits": {"folds": 2, "test_fraction": 0.2},
    "inputs": {"slices": 2, "size": 16, "sequences": ["t1c"]},
    "tabular": {"clinical": ["age", "sex"], "volumetric": True},
    "network": {"backbone": "test_efficientnet", "tabular_hidden": [8], "head_hidden": [8]},
    "fit": {"epochs": 2, "batch_size": 8, "device": "cpu"},
})


def cohort(tmp_path: Path, n: int = 30) -> tuple[pd.DataFrame, dict[str, Path]]:
    rng = np.random.default_rng(4)
    table = pd.DataFrame({
        "case_id": [f"site_{'ab'[i % 2]}-{i:04d}" for i in range(n)], "site": [f"site_{'ab'[i % 2]}" for i in range(n)],
        "time_days": rng.uniform(30, 900, n).round(), "event": (rng.random(n) < 0.7).astype(int),
        "age": rng.normal(60, 10, n), "sex": rng.choice(["female", "male"], n), "vol_wt_mm3": rng.lognormal(9, 1, n),
    })
    table.loc[3, "age"] = np.nan  # imputed with the training median
    paths = {}
    for case_id in table["case_id"]:
        folder = tmp_path / "inputs" / case_id
        folder.mkdir(parents=True)
        np.save(folder / "input.npy", rng.standard_normal((2, 1, 16, 16)).astype(np.float32))
        write_json({"shape": [2, 1, 16, 16]}, folder / "manifest.json")
        paths[case_id] = folder / "input.npy"
    return table, paths


def test_the_tabular_pipeline_is_fitted_on_the_training_rows_only(tmp_path: Path) -> None:
    table, paths = cohort(tmp_path)
    fold = make_splits(table, TRAINING.splits).folds[0]
    train, validation, pipeline, names = folds_lib.fold_arrays(table, fold, paths, TRAINING)
    scaler = pipeline.named_steps["encode"].named_transformers_["numbers"][-1]  # type: ignore[union-attr]
    volume = names.index("numbers__vol_wt_mm3")
    train_rows = table.set_index("case_id").loc[list(fold.train)]
    assert scaler.mean_[volume] == pytest.approx(train_rows["vol_wt_mm3"].mean())
    assert scaler.mean_[volume] != pytest.approx(table["vol_wt_mm3"].mean())  # would fail if it saw validation rows
    assert train.tabular is not None and validation.tabular is not None
    assert abs(float(train.tabular[:, volume].mean())) < 1e-5  # standardised on the training rows
    assert train.images is not None and train.images.shape == (len(fold.train), 2, 1, 16, 16)
    assert set(train.case_ids).isdisjoint(validation.case_ids)


def test_a_fold_is_trained_once_stored_without_pickle_for_weights_and_reloaded_identically(tmp_path: Path) -> None:
    table, paths = cohort(tmp_path)
    splits = make_splits(table, TRAINING.splits)
    fold = splits.folds[0]
    input_keys = {c: f"key-{c}" for c in paths}
    key = folds_lib.fold_key(fold, "table", input_keys, TRAINING)
    result = folds_lib.train_fold(fold, table, paths, TRAINING, tmp_path / "work", key)
    assert all(p.is_file() for p in result.files())
    assert result.summary["epochs"] == 2 and result.summary["patients_train"] == len(fold.train)
    mtime = (result.folder / "model.safetensors").stat().st_mtime_ns
    again = folds_lib.train_fold(fold, table, paths, TRAINING, tmp_path / "work", key)
    assert (again.folder / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not retrained
    # the reloaded model predicts the validation patients exactly as the trained one did
    model = folds_lib.load_fold_model(result)
    validation = table.set_index("case_id", drop=False).loc[list(fold.validation)].reset_index(drop=True)
    from survival_model.training.data import stack_images

    outputs = folds_lib.fold_outputs(model, validation, stack_images(paths, fold.validation))
    stored = pd.read_parquet(result.folder / "validation.parquet")
    np.testing.assert_allclose(outputs[:, 0], stored["output_0"], rtol=1e-5, atol=1e-6)


def test_fold_keys_change_with_what_a_fold_learns_from_and_not_with_where_it_runs(tmp_path: Path) -> None:
    table, paths = cohort(tmp_path)
    fold = make_splits(table, TRAINING.splits).folds[0]
    keys = {c: f"key-{c}" for c in paths}
    base = folds_lib.fold_key(fold, "table", keys, TRAINING)
    assert folds_lib.fold_key(fold, "table", keys, TRAINING) == base
    runtime = TRAINING.model_copy(update={"fit": TRAINING.fit.model_copy(update={"workers": 3,
                                                                                   "parallel_folds": False})})
    assert folds_lib.fold_key(fold, "table", keys, runtime) == base
    slower = TRAINING.model_copy(update={"fit": TRAINING.fit.model_copy(update={"learning_rate": 1e-4})})
    assert folds_lib.fold_key(fold, "table", keys, slower) != base
    assert folds_lib.fold_key(fold, "other table", keys, TRAINING) != base
    changed_image = {**keys, fold.train[0]: "new"}
    assert folds_lib.fold_key(fold, "table", changed_image, TRAINING) != base
    other_patient = next(c for c in paths if c not in fold.train and c not in fold.validation)  # a test patient
    assert folds_lib.fold_key(fold, "table", {**keys, other_patient: "new"}, TRAINING) == base
    tabular_only = TRAINING.model_copy(update={"network": TRAINING.network.model_copy(update={"variant": "tabular"})})
    assert folds_lib.fold_key(fold, "table", changed_image, tabular_only) == folds_lib.fold_key(
        fold, "table", keys, tabular_only)  # images do not matter to a tabular model


def test_the_ensemble_averages_the_folds_and_is_scored_on_the_test_set_beside_the_oracle(tmp_path: Path) -> None:
    table, paths = cohort(tmp_path, 40)
    splits = make_splits(table, TRAINING.splits)
    keys = {c: f"key-{c}" for c in paths}
    work = tmp_path / "work"
    trained = [folds_lib.train_fold(f, table, paths, TRAINING, work, folds_lib.fold_key(f, "t", keys, TRAINING))
               for f in splits.folds]
    splits_path = splits.save(work / "splits.json")
    oracle = pd.Series(-table["time_days"].to_numpy(), index=table["case_id"])  # a perfect ranking
    evaluation = EvaluationParams(bootstrap=100)
    key = stage_key("t", keys, splits, TRAINING, evaluation, "oracle")
    result = evaluate_ensemble(trained, table, splits, splits_path, paths, TRAINING, evaluation, oracle, work, key)
    predictions = result.predictions()
    assert sorted(predictions["case_id"]) == sorted(splits.test)
    fold_columns = [f"risk_{f.name}" for f in trained]
    # cox: the ensemble risk is the mean of the fold log-risks (mean of outputs)
    np.testing.assert_allclose(predictions["risk"], predictions[fold_columns].mean(axis=1), rtol=1e-5, atol=1e-6)
    assert result.metrics["oracle"]["cindex"]["value"] == 1.0
    assert result.metrics["test"]["patients"] == len(splits.test)
    assert set(result.metrics["cv"]["per_fold"]) == {f.name for f in splits.folds}
    assert (result.folder / "learning_curves.png").stat().st_size > 1000
    assert load_result(result.folder) == result
