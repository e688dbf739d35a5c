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
    "splits": {"folds": 2, "test_fraction": 0.2, "seed": 1},
    "inputs": {"slices": 2, "size": 16, "sequences": ["t1c"]},
    "tabular": {"clinical": ["age", "sex"], "volumetric": True, "scores": []},
    "network": {"backbone": "test_efficientnet", "image_bottleneck": 4},
    "fit": {"epochs": 2, "device": "cpu", "tabular_penalties": [0.01, 0.1]},
})


def cohort(tmp_path: Path, n: int = 30) -> tuple[pd.DataFrame, dict[str, Path]]:
    rng = np.random.default_rng(4)
    table = pd.DataFrame({
        "case_id": [f"site_{'ab'[i % 2]}-{i:04d}" for i in range(n)], "site": [f"site_{'ab'[i % 2]}" for i in range(n)],
        "event": (rng.random(n) < 0.7).astype(int), "age": rng.normal(60, 10, n),
        "sex": rng.choice(["female", "male"], n), "vol_wt_mm3": rng.lognormal(9, 1, n),
    })
    # survival shortens with the tumour volume: a signal the tabular term can find
    table["time_days"] = (4000 / np.sqrt(table["vol_wt_mm3"]) * rng.lognormal(0, 0.3, n)).round() + 1
    table.loc[3, "age"] = np.nan  # imputed with the training median
    paths = {}
    for case_id in table["case_id"]:
        folder = tmp_path / "inputs" / case_id
        folder.mkdir(parents=True)
        np.save(folder / "input.npy", rng.standard_normal((2, 1, 16, 16)).astype(np.float32))
        write_json({"shape": [2, 1, 16, 16]}, folder / "manifest.json")
        paths[case_id] = folder / "input.npy"
    return table, paths


def test_the_tabular_pipeline_is_fitted_on_the_fitting_rows_only(tmp_path: Path) -> None:
    table, paths = cohort(tmp_path)
    fold = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits).folds[0]
    data = folds_lib.fold_arrays(table, fold, paths, TRAINING)
    assert data.pipeline is not None and len(fold.stop) > 0
    scaler = data.pipeline.named_steps["encode"].named_transformers_["numbers"][-1]
    volume = data.names.index("numbers__vol_wt_mm3")
    fitting = [c for c in fold.train if c not in fold.stop]
    fit_rows = table.set_index("case_id").loc[fitting]
    assert scaler.mean_[volume] == pytest.approx(np.log1p(fit_rows["vol_wt_mm3"]).mean())  # log volumes
    # would fail if it saw the stopping or the validation rows
    assert scaler.mean_[volume] != pytest.approx(np.log1p(table.set_index("case_id").loc[list(fold.train)]
                                                          ["vol_wt_mm3"]).mean())
    assert data.fit.tabular is not None and data.validation.tabular is not None
    assert abs(float(data.fit.tabular[:, volume].mean())) < 1e-5  # standardised on the fitting rows
    assert "numbers__score_gpa" not in data.names  # the GPA needs fields this cohort lacks: not asked for here
    assert data.fit.images is not None and data.fit.images.shape == (len(fitting), 2, 1, 16, 16)
    assert set(data.fit.case_ids) | set(data.stop.case_ids) == set(fold.train)
    assert set(data.fit.case_ids).isdisjoint(data.stop.case_ids) and set(fold.train).isdisjoint(fold.validation)
    # the penalty's inner cross-validation: each inner fit's scaling from its own patients (fitting, then stopping)
    assert data.inner_tabular is not None
    training_ids = [*data.fit.case_ids, *data.stop.case_ids]
    kept = np.arange(len(training_ids)) % 3 != 0
    inner_rows, every_row = data.inner_tabular(kept)
    assert inner_rows.shape == (int(kept.sum()), len(data.names)) and every_row.shape[0] == len(training_ids)
    assert abs(float(inner_rows[:, volume].mean())) < 1e-5  # standardised on the inner fit's rows alone
    np.testing.assert_allclose(every_row[kept], inner_rows)
    assert float(every_row[:, volume].std()) != pytest.approx(float(data.fit.tabular[:, volume].std()))


def test_a_fold_is_trained_once_stored_without_pickle_for_weights_and_reloaded_identically(tmp_path: Path) -> None:
    table, paths = cohort(tmp_path)
    splits = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits)
    fold = splits.folds[0]
    input_keys = {c: f"key-{c}" for c in paths}
    key = folds_lib.fold_key(fold, "table", input_keys, TRAINING)
    result = folds_lib.train_fold(fold, table, paths, TRAINING, tmp_path / "work", key)
    assert all(p.is_file() for p in result.files())
    assert result.summary["epochs"] == 2 and result.summary["patients_fit"] + result.summary["patients_stop"] == \
        len(fold.train) and result.summary["patients_stop"] == len(fold.stop)
    assert result.summary["selection"].startswith("stopping patients")
    mtime = (result.folder / "model.safetensors").stat().st_mtime_ns
    again = folds_lib.train_fold(fold, table, paths, TRAINING, tmp_path / "work", key)
    assert (again.folder / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not retrained
    # the reloaded model predicts the validation patients exactly as the trained one did
    model = folds_lib.load_fold_model(result)
    validation = table.set_index("case_id", drop=False).loc[list(fold.validation)].reset_index(drop=True)
    from survival_model.training.data import stack_images

    outputs = folds_lib.fold_outputs(model, validation, stack_images(paths, fold.validation))
    stored = pd.read_parquet(result.folder / "validation.parquet").set_index("case_id").loc[list(fold.validation)]
    np.testing.assert_allclose(outputs[:, 0], stored["output_0"], rtol=1e-5, atol=1e-6)


def test_fold_keys_change_with_what_a_fold_learns_from_and_not_with_where_it_runs(tmp_path: Path) -> None:
    table, paths = cohort(tmp_path)
    fold = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits).folds[0]
    keys = {c: f"key-{c}" for c in paths}
    base = folds_lib.fold_key(fold, "table", keys, TRAINING)
    assert folds_lib.fold_key(fold, "table", keys, TRAINING) == base
    runtime = TRAINING.model_copy(update={"fit": TRAINING.fit.model_copy(update={"device": "cpu",
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
    splits = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits)
    keys = {c: f"key-{c}" for c in paths}
    work = tmp_path / "work"
    trained = [folds_lib.train_fold(f, table, paths, TRAINING, work, folds_lib.fold_key(f, "t", keys, TRAINING))
               for f in splits.folds]
    splits_path = splits.save(work / "splits.json")
    oracle = pd.Series(-table["time_days"].to_numpy() + 0.1 * table["event"].to_numpy(),  # a perfect ranking
                       index=table["case_id"])
    evaluation = EvaluationParams(bootstrap=100)
    key = stage_key("t", keys, splits, TRAINING, evaluation, "oracle")
    result = evaluate_ensemble(trained, table, splits, splits_path, paths, TRAINING, evaluation, oracle, work, key)
    predictions = result.predictions()
    assert sorted(predictions["case_id"]) == sorted(splits.test)
    fold_columns = [f"risk_{f.name}" for f in trained]
    # cox: the ensemble risk is the mean of the fold log-risks (mean of outputs)
    np.testing.assert_allclose(predictions["risk"], predictions[fold_columns].mean(axis=1), rtol=1e-5, atol=1e-6)
    assert result.metrics["oracle"]["cindex"]["value"] == 1.0
    assert result.metrics["test"]["cindex"]["value"] > 0.7  # the ensemble finds the volume signal
    assert result.metrics["test"]["patients"] == len(splits.test)
    assert set(result.metrics["cv"]["per_fold"]) == {f.name for f in splits.folds}
    assert (result.folder / "learning_curves.png").stat().st_size > 1000
    assert load_result(result.folder) == result


def test_a_folds_risks_are_centred_on_its_training_patients_whatever_constant_it_learned(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from survival_model.training.data import stack_images

    table, paths = cohort(tmp_path)
    fold = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits).folds[0]
    result = folds_lib.train_fold(fold, table, paths, TRAINING, tmp_path / "work", "k")
    model = folds_lib.load_fold_model(result)
    rows = table.set_index("case_id", drop=False)
    train_rows = rows.loc[list(fold.train)].reset_index(drop=True)
    train_out = folds_lib.fold_outputs(model, train_rows, stack_images(paths, fold.train))[:, 0]
    assert abs(float(train_out.mean())) < 1e-4  # centred on the fold's training patients (fitting + stopping)
    assert result.summary["output_offset"] != 0.0

    # the same fold with a constant added to its tabular term (a Cox model's arbitrary level), centred again
    state = load_file(str(result.folder / "model.safetensors"))
    bias = sorted(k for k in state if k.startswith("tabular.") and k.endswith(".bias"))[-1]
    state[bias] = state[bias] + 7.0
    model.network.load_state_dict(state)
    data = folds_lib.fold_arrays(table, fold, paths, TRAINING)
    folds_lib._centre(model.network, "cox", [data.fit, data.stop], folds_lib._cpu())
    validation = rows.loc[list(fold.validation)].reset_index(drop=True)
    shifted = folds_lib.fold_outputs(model, validation, stack_images(paths, fold.validation))[:, 0]
    stored = pd.read_parquet(result.folder / "validation.parquet").set_index("case_id").loc[list(fold.validation)]
    np.testing.assert_allclose(shifted, stored["risk"].to_numpy(), atol=1e-4)
    assert torch.isfinite(model.network.output_offset).all()


def test_a_fold_learns_the_same_whatever_the_pseudonym_key(tmp_path: Path) -> None:
    # the same patients under other pseudonymous ids (another key sorts them otherwise): the same model
    table, paths = cohort(tmp_path)
    fold = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits).folds[0]
    rename = {c: f"other-{(i * 7919) % 1000:03d}-{c[-4:]}" for i, c in enumerate(table["case_id"])}
    renamed = table.assign(case_id=table["case_id"].map(rename))
    other_paths = {rename[c]: p for c, p in paths.items()}
    other_fold = type(fold)(fold.name, tuple(rename[c] for c in fold.train), tuple(rename[c] for c in fold.validation),
                            tuple(rename[c] for c in fold.stop))
    first = folds_lib.train_fold(fold, table, paths, TRAINING, tmp_path / "a", "k")
    second = folds_lib.train_fold(other_fold, renamed, other_paths, TRAINING, tmp_path / "b", "k")
    risks = pd.read_parquet(first.folder / "validation.parquet").set_index("case_id")["risk"]
    other = pd.read_parquet(second.folder / "validation.parquet").set_index("case_id")["risk"]
    np.testing.assert_array_equal(risks.rename(index=rename).sort_index().to_numpy(), other.sort_index().to_numpy())


def test_a_runs_table_name_shows_only_the_image_term_switches_that_differ_from_their_defaults(tmp_path: Path) -> None:
    from survival_model.training.stage import TrainingResult

    def name(**metrics: object) -> str:
        recorded = {"variant": "hybrid", "objective": "cox", "backbone": "b", **metrics}
        return TrainingResult(tmp_path, tmp_path / "splits.json", (), recorded).name

    assert name(region_intensities=True, image_standardise=True, image_linear=False) == "hybrid-cox (b)"
    assert name(region_intensities=False, image_standardise=False) == "hybrid-cox -intensities -standardised (b)"
    assert name(image_linear=True, fusion="concat") == "hybrid-cox concat +linear (b)"
    assert name() == "hybrid-cox (b)"  # runs recorded before the switches existed
