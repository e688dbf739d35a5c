"""A fold trained into its content-keyed folder, reloaded for prediction, and the ensemble on the test set (the
whole training stage's key and reuse)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import EvaluationParams, TrainingParams
from survival_model.evaluation.ensemble import ScoreEnsemble, training_outputs, training_stage
from survival_model.features.stage import FeatureTable
from survival_model.imageio import read_json, write_json, write_parquet
from survival_model.models.inputs import INPUT_FILE, MANIFEST_FILE, ImageInput
from survival_model.patient import Patient
from survival_model.stage import run, short
from survival_model.training import folds as folds_lib
from survival_model.training.folds import TrainFold, TrainingError
from survival_model.training.splits import make_splits
from survival_model.training.stage import load_result

TRAINING = TrainingParams.model_validate({
    "splits": {"folds": 2, "test_fraction": 0.2, "seed": 1},
    "inputs": {"slices": 2, "size": 16, "sequences": ["t1c"], "mask_channels": []},
    "tabular": {"clinical": ["age", "sex"], "volumetric": True, "scores": []},
    "network": {"backbone": "test_efficientnet", "image_bottleneck": 4, "image_features": "global"},
    "fit": {"epochs": 2, "device": "cpu", "tabular_penalties": [0.01, 0.1]},
})


def cohort(tmp_path: Path, n: int = 30) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A feature table with a volume signal, and each patient's image-input array."""
    rng = np.random.default_rng(4)
    table = pd.DataFrame({
        "case_id": [f"site_{'ab'[i % 2]}-{i:04d}" for i in range(n)], "site": [f"site_{'ab'[i % 2]}" for i in range(n)],
        "event": (rng.random(n) < 0.7).astype(int), "age": rng.normal(60, 10, n),
        "sex": rng.choice(["female", "male"], n), "vol_wt_mm3": rng.lognormal(9, 1, n),
    })
    # survival shortens with the tumour volume: a signal the tabular term can find
    table["time_days"] = (4000 / np.sqrt(table["vol_wt_mm3"]) * rng.lognormal(0, 0.3, n)).round() + 1
    table.loc[3, "age"] = np.nan  # imputed with the training median
    arrays = {c: rng.standard_normal((2, 1, 16, 16)).astype(np.float32) for c in table["case_id"]}
    return table, arrays


def image_inputs(arrays: dict[str, np.ndarray], work: Path, sites: dict[str, str] | None = None,
                 keys: dict[str, str] | None = None) -> dict[str, ImageInput]:
    """Finished image-input stages holding ``arrays`` (preprocessing key ``key-<case id>`` unless given)."""
    stages = {}
    for case_id, array in arrays.items():
        key = (keys or {}).get(case_id, f"key-{case_id}")
        patient = Patient((sites or {}).get(case_id, "site"), case_id, work, {}, work / "seg.nii.gz", None, key)
        stage = ImageInput(patient, TRAINING.inputs, work)
        folder = stage.folder()
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / INPUT_FILE, array)
        write_json({"shape": list(array.shape)}, folder / MANIFEST_FILE)
        stages[case_id] = stage
    return stages


def feature_table(table: pd.DataFrame, folder: Path) -> FeatureTable:
    """``table`` stored as a feature table in ``folder`` (whose name stands for the table's key)."""
    write_parquet(table, folder / "features.parquet")
    return FeatureTable(folder, folder / "features.parquet", folder / "quarantine.parquet", {}, {})


def setup(tmp_path: Path, n: int = 30) -> tuple[pd.DataFrame, FeatureTable, dict[str, ImageInput]]:
    table, arrays = cohort(tmp_path, n)
    work = tmp_path / "work"
    return table, feature_table(table, tmp_path / "table"), image_inputs(arrays, work)


def built(images: dict[str, ImageInput]) -> dict[str, Path]:
    return {c: run(s) for c, s in images.items()}


def test_the_tabular_pipeline_is_fitted_on_the_fitting_rows_only(tmp_path: Path) -> None:
    table, _, images = setup(tmp_path)
    fold = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits).folds[0]
    data = folds_lib.fold_arrays(table, fold, built(images), TRAINING)
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
    table, features, images = setup(tmp_path)
    splits = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits)
    fold = splits.folds[0]
    stage = TrainFold(fold, features, images, TRAINING, tmp_path / "work")
    result = run(stage)
    assert result.folder == stage.folder() and result.key == stage.key() and result.name == fold.name
    assert stage.label() == "train-fold-1"
    assert stage.folder() == tmp_path / "work" / "training" / "folds" / "fold-1" / short(stage.key())
    assert all(p.is_file() for p in result.files()) and result.files() == stage.outputs(stage.folder())
    assert result.summary["epochs"] == 2 and result.summary["patients_fit"] + result.summary["patients_stop"] == \
        len(fold.train) and result.summary["patients_stop"] == len(fold.stop)
    assert result.summary["selection"].startswith("stopping patients")
    mtime = (result.folder / "model.safetensors").stat().st_mtime_ns
    again = run(TrainFold(fold, features, images, TRAINING, tmp_path / "work"))
    assert (again.folder / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not retrained
    # the reloaded model predicts the validation patients exactly as the trained one did
    model = folds_lib.load_fold_model(result)
    validation = table.set_index("case_id", drop=False).loc[list(fold.validation)].reset_index(drop=True)
    from survival_model.training.data import stack_images

    outputs = folds_lib.fold_outputs(model, validation, stack_images(built(images), fold.validation))
    stored = pd.read_parquet(result.folder / "validation.parquet").set_index("case_id").loc[list(fold.validation)]
    np.testing.assert_allclose(outputs[:, 0], stored["output_0"], rtol=1e-5, atol=1e-6)


def test_fold_keys_change_with_what_a_fold_learns_from_and_not_with_where_it_runs(tmp_path: Path) -> None:
    table, arrays = cohort(tmp_path)
    fold = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits).folds[0]
    work, features = tmp_path / "work", FeatureTable(tmp_path / "table", tmp_path / "t.parquet", tmp_path, {}, {})
    images = image_inputs(arrays, work)

    def key(training: TrainingParams = TRAINING, table: FeatureTable = features,
            inputs: dict[str, ImageInput] = images) -> str:
        return TrainFold(fold, table, inputs, training, work).key()

    base = key()
    assert key() == base
    runtime = TRAINING.model_copy(update={"fit": TRAINING.fit.model_copy(update={"device": "cpu",
                                                                                   "parallel_folds": False})})
    assert key(runtime) == base
    slower = TRAINING.model_copy(update={"fit": TRAINING.fit.model_copy(update={"learning_rate": 1e-4})})
    assert key(slower) != base
    assert key(table=FeatureTable(tmp_path / "other table", features.table_path, tmp_path, {}, {})) != base
    changed_image = image_inputs(arrays, work, keys={fold.train[0]: "new"})  # the patient preprocessed again
    assert key(inputs=changed_image) != base
    other_patient = next(c for c in arrays if c not in fold.train and c not in fold.validation)  # a test patient
    assert key(inputs=image_inputs(arrays, work, keys={other_patient: "new"})) == base
    tabular_only = TRAINING.model_copy(update={"network": TRAINING.network.model_copy(update={"variant": "tabular"})})
    assert key(tabular_only, inputs=changed_image) == key(tabular_only)  # images do not matter to a tabular model
    assert key(tabular_only, inputs={}) == key(tabular_only)  # nor does a tabular model need them
    with pytest.raises(TrainingError, match="needs every patient's image input; 1 have none"):
        TrainFold(fold, features, {c: s for c, s in images.items() if c != fold.validation[0]}, TRAINING, work)


def test_the_ensemble_averages_the_folds_and_is_scored_on_the_test_set_beside_the_oracle(tmp_path: Path) -> None:
    table, features, images = setup(tmp_path, 40)
    splits = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits)
    work = tmp_path / "work"
    folds = tuple(TrainFold(f, features, images, TRAINING, work) for f in splits.folds)
    trained = [run(f) for f in folds]
    splits_path = splits.save(work / "splits.json")
    oracle = pd.Series(-table["time_days"].to_numpy() + 0.1 * table["event"].to_numpy(),  # a perfect ranking
                       index=table["case_id"])
    evaluation = EvaluationParams(bootstrap=100)
    score = ScoreEnsemble(folds, features, images, splits, splits_path, TRAINING, evaluation, oracle, work)
    result = run(score)
    assert result.folder == work / "training" / "runs" / short(score.key())
    assert read_json(result.folder / "result.json")["key"] == score.key()
    assert result.folds == tuple(trained) and result.splits_path == splits_path
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
    # its key is the whole stage's: the scoring settings and the oracle are in it
    other = ScoreEnsemble(folds, features, images, splits, splits_path, TRAINING, EvaluationParams(bootstrap=50),
                          oracle, work)
    assert other.key() != score.key()
    assert ScoreEnsemble(folds, features, images, splits, splits_path, TRAINING, evaluation, None, work).key() \
        != score.key()

    # the whole stage: recorded under the run's key, reused while every file it needs is there
    whole = training_stage(score)
    assert whole.key() == score.key() and whole.load() is None  # not recorded yet
    needed = training_outputs(score)
    assert splits_path in needed and all(p in needed for p in built(images).values())
    assert all(p in needed for f in trained for p in f.files())
    whole.save(result.folder, needed)
    assert training_stage(score).load() == result
    (trained[1].folder / "tabular.joblib").unlink()  # a fold's file gone: the stage runs its tasks again
    assert whole.load() is None


def test_a_folds_risks_are_centred_on_its_training_patients_whatever_constant_it_learned(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from survival_model.training.data import stack_images

    table, features, images = setup(tmp_path)
    paths = built(images)
    fold = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits).folds[0]
    result = run(TrainFold(fold, features, images, TRAINING, tmp_path / "work"))
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
    table, arrays = cohort(tmp_path)
    fold = make_splits(table.assign(source_digest=table["case_id"]), TRAINING.splits).folds[0]
    rename = {c: f"other-{(i * 7919) % 1000:03d}-{c[-4:]}" for i, c in enumerate(table["case_id"])}
    renamed = table.assign(case_id=table["case_id"].map(rename))
    other_fold = type(fold)(fold.name, tuple(rename[c] for c in fold.train), tuple(rename[c] for c in fold.validation),
                            tuple(rename[c] for c in fold.stop))
    first = run(TrainFold(fold, feature_table(table, tmp_path / "a-table"), image_inputs(arrays, tmp_path / "a"),
                          TRAINING, tmp_path / "a"))
    second = run(TrainFold(other_fold, feature_table(renamed, tmp_path / "b-table"),
                           image_inputs({rename[c]: a for c, a in arrays.items()}, tmp_path / "b"), TRAINING,
                           tmp_path / "b"))
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
