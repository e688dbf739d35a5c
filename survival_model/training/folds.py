"""One cross-validation fold, trained once per content key and stored with everything to predict again.

A fold's training patients are divided (``survival_model.training.splits``) into the patients the network
is fitted on and the fold's **stopping** patients, on which every choice is made (the tabular penalty, the
epoch kept: ``survival_model.training.loop``). The fold's validation patients are scored once, at the end,
by the model that was kept: they never influence it, so their risks are an honest out-of-fold prediction.
The tabular pipeline is fitted on the fitting patients only (its radiomics ranking reads the outcome).

After training, a ``cox`` network's outputs are centred on the fold's training patients (fitting and
stopping): its mean risk there is stored as the network's ``output_offset`` and subtracted from every
output, so the risks of different folds are on one scale before they are pooled or averaged.

A fold is one :class:`TrainFold` stage (``survival_model.stage``). Its key is the feature table's content
key, the image inputs' content keys of its patients, the fold's case ids, the training params (all but
``fit.device``/``parallel_folds``, which do not change the result) and the code version of the training,
model and evaluation-metric modules. Its folder ``<work_dir>/training/folds/<fold>/<key>/`` holds:

- ``model.safetensors``: the kept weights and the output offset (no pickle);
- ``config.json``: what rebuilds the network (network params, channels, tabular width, output centre,
  the tabular feature names) and the fold's summary (the choices made, the validation C-index);
- ``tabular.joblib``: the tabular pipeline fitted on the fold's fitting rows (a pickle: trusted
  because this pipeline wrote it; loading it from elsewhere means trusting its author);
- ``history.csv``: the per-epoch curves (on the stopping patients); ``validation.parquet``: the
  validation patients' outputs and (centred) risks.

A finished folder is reused, never retrained.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import joblib
import numpy as np
import numpy.typing as npt
import pandas as pd

from survival_model.config import SEQUENCES, NetworkParams, TabularParams, TrainingParams
from survival_model.errors import SurvivalModelError
from survival_model.features.stage import FeatureTable
from survival_model.fingerprint import code_version, content_order, file_digest, stable_hash
from survival_model.imageio import read_json, write_json, write_parquet, write_text
from survival_model.metrics import harrell_c
from survival_model.models.inputs import ImageInput
from survival_model.models.tabular import feature_names, fit_transform_fold
from survival_model.stage import Stage, run
from survival_model.training.arrays import SurvivalArrays, stack_images
from survival_model.training.devices import fold_device
from survival_model.training.splits import Fold

# torch and timm load only where a model trains or predicts (the function-local imports below): a warm run checks
# keys and records without them (seconds of imports)
if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from survival_model.models.network import HybridSurvivalNet
    from survival_model.training.loop import DeviceChoice, EpochRecord, InnerTabular

log = logging.getLogger(__name__)

STAGE = "training"
FILES = ("model.safetensors", "config.json", "tabular.joblib", "history.csv", "validation.parquet")
#: Settings that change where or how fast a fold trains, not what it learns.
RUNTIME_ONLY = {"device", "parallel_folds"}


class TrainingError(SurvivalModelError):
    """A fold cannot be trained (no patient, no death, missing inputs)."""


def training_code_version() -> str:
    # the evaluation package's metrics module only: the comparison stage's code is not the folds' business
    return code_version("survival_model.training", "survival_model.models", "survival_model.metrics")


def learning_params(training: TrainingParams) -> dict[str, Any]:
    """The training params that decide what a fold learns (keys of folds and of the stage)."""
    data = training.model_dump(mode="json")
    data["fit"] = {k: v for k, v in data["fit"].items() if k not in RUNTIME_ONLY}
    weights = training.network.pretrained_weights
    if weights is not None:  # the file's content, not its path
        data["network"]["pretrained_weights"] = file_digest(weights)
    return data


def uses_images(network: NetworkParams) -> bool:
    return network.variant in ("hybrid", "image")


def uses_tabular(network: NetworkParams) -> bool:
    return network.variant in ("hybrid", "tabular")


def region_channels(config: Mapping[str, Any]) -> int:
    """How many of a stored fold's input channels are region masks (they come after the sequences)."""
    return sum(1 for c in config.get("channels", []) if c not in SEQUENCES)


@dataclass(frozen=True)
class FoldResult:
    """A trained fold's folder and summary."""

    name: str
    key: str
    folder: Path
    summary: dict[str, Any]

    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.folder / "history.csv")

    def files(self) -> list[Path]:
        return [self.folder / name for name in FILES]


def load_fold(folder: Path) -> FoldResult | None:
    """The fold stored in ``folder``, or None when it is not (completely) there."""
    if not all((folder / name).is_file() for name in FILES):
        return None
    config = read_json(folder / "config.json")
    return FoldResult(config["fold"], config["key"], folder, config["summary"])


def _rows(table: pd.DataFrame, case_ids: Sequence[str]) -> pd.DataFrame:
    indexed = table.set_index("case_id", drop=False)
    missing = [c for c in case_ids if c not in indexed.index]
    if missing:
        raise TrainingError(f"{len(missing)} split patient(s) are not in the feature table, e.g. {missing[0]}")
    return indexed.loc[list(case_ids)].reset_index(drop=True)


@dataclass(frozen=True)
class FoldArrays:
    """A fold's patients as arrays: fitted on, stopping (choices), validation (scored once)."""

    fit: SurvivalArrays
    stop: SurvivalArrays
    validation: SurvivalArrays
    pipeline: Pipeline | None
    names: list[str]
    #: The tabular matrices of an inner fit inside the training patients (fitting, then stopping) from a
    #: pipeline fitted on its own patients (the tabular penalty's cross-validation); None without a table.
    inner_tabular: InnerTabular | None = None


def fold_arrays(table: pd.DataFrame, fold: Fold, image_paths: Mapping[str, Path] | None,
                training: TrainingParams) -> FoldArrays:
    """The fold's three sets as arrays; the tabular pipeline fitted on the fitting rows only."""
    stop_ids = set(fold.stop)
    fit_ids = [c for c in fold.train if c not in stop_ids]
    sets = {"fit": fit_ids, "stop": list(fold.stop), "validation": list(fold.validation)}
    frames = {name: _rows(table, ids) for name, ids in sets.items()}
    for name, frame in frames.items():  # patients in an order their data decide, not their (keyed) ids
        frames[name] = frame.iloc[content_order(frame.to_dict("records"))].reset_index(drop=True)
        sets[name] = [str(c) for c in frames[name]["case_id"]]
    pipeline, names = None, []
    tabular: dict[str, Any] = dict.fromkeys(sets)
    if uses_tabular(training.network):
        pipeline, matrices = fit_transform_fold(training.tabular, frames["fit"], [frames["stop"], frames["validation"]])
        tabular = dict(zip(sets, matrices, strict=True))
        names = feature_names(pipeline)
    images: dict[str, Any] = dict.fromkeys(sets)
    if uses_images(training.network):
        if image_paths is None:
            raise TrainingError(f"the {training.network.variant} network needs image inputs")
        images = {name: stack_images(image_paths, ids) for name, ids in sets.items()}
    arrays = {name: _arrays(frames[name], images[name], tabular[name]) for name in sets}
    inner = _inner_tabular(training.tabular, pd.concat([frames["fit"], frames["stop"]], ignore_index=True)) \
        if pipeline is not None else None
    return FoldArrays(arrays["fit"], arrays["stop"], arrays["validation"], pipeline, names, inner)


def _inner_tabular(params: TabularParams, rows: pd.DataFrame) -> InnerTabular:
    """:data:`InnerTabular` over the fold's training ``rows`` (fitting, then stopping patients)."""
    def matrices(kept: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        _, (x_kept, x_all) = fit_transform_fold(params, rows[kept].reset_index(drop=True), [rows])
        return x_kept, x_all

    return matrices


def _arrays(frame: pd.DataFrame, images: Any, tabular: Any) -> SurvivalArrays:
    return SurvivalArrays(tuple(str(c) for c in frame["case_id"]), frame["time_days"].to_numpy(dtype=float),
                          frame["event"].astype(int).to_numpy() == 1, images, tabular)


def _centre(model: HybridSurvivalNet, objective: str, arrays: Sequence[SurvivalArrays], choice: DeviceChoice) -> float:
    """Set a ``cox`` network's output offset to its mean risk on ``arrays`` (the fold's training patients)."""
    import torch  # torch: only when a fold trains

    from survival_model.training.loop import predict_outputs  # torch: only when a fold trains

    if objective != "cox":
        return 0.0
    with torch.no_grad():
        model.output_offset.fill_(0.0)  # type: ignore[operator]
    outputs = np.concatenate([predict_outputs(model, a, choice)[:, 0] for a in arrays if len(a)])
    offset = float(np.mean(outputs))
    with torch.no_grad():
        model.output_offset.fill_(offset)  # type: ignore[operator]
    return offset


def input_paths(images: Mapping[str, ImageInput], case_ids: Iterable[str]) -> dict[str, Path]:
    """The image inputs of ``case_ids``, each built where it is not yet (``survival_model.stage.run``)."""
    return {c: run(images[c]) for c in case_ids}


@dataclass(frozen=True)
class TrainFold(Stage[FoldResult]):
    """One fold trained into ``<work_dir>/training/folds/<fold>/<key[:16]>/`` (see the module docstring).

    ``table`` is the feature table (its folder is named by its content key); ``images`` every patient's image
    input (the fold reads, and its key holds, those of its own patients, and only for a network with an image
    branch). With folds in parallel on several CUDA devices, :meth:`compute` trains on a device no other fold
    holds (``survival_model.training.devices``).
    """

    name: ClassVar[str] = "train-fold"
    fold: Fold
    table: FeatureTable
    images: Mapping[str, ImageInput]
    training: TrainingParams
    work_dir: Path

    def __post_init__(self) -> None:
        if uses_images(self.training.network):
            missing = [c for c in (*self.fold.train, *self.fold.validation) if c not in self.images]
            if missing:
                raise TrainingError(f"{self.fold.name}: the {self.training.network.variant} network needs every "
                                    f"patient's image input; {len(missing)} have none, e.g. {missing[0]}")

    def label(self) -> str:
        return f"train-{self.fold.name}"

    def make_key(self) -> str:
        fold = self.fold
        patients = sorted({*fold.train, *fold.validation})
        images = [self.images[c].key() for c in patients] if uses_images(self.training.network) else []
        return stable_hash(STAGE, "fold", training_code_version(), self.table.folder.name, fold.name,
                           sorted(fold.train), sorted(fold.stop), sorted(fold.validation), images,
                           learning_params(self.training))

    def place(self) -> tuple[str, ...]:
        return (STAGE, "folds", self.fold.name)

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / name for name in FILES]

    def load(self, folder: Path) -> FoldResult | None:
        return load_fold(folder)

    def compute(self, tmp: Path) -> None:
        from survival_model.training.loop import choose_device  # torch: only when a fold trains

        paths = input_paths(self.images, (*self.fold.train, *self.fold.validation)) \
            if uses_images(self.training.network) else None
        table = pd.read_parquet(self.table.table_path)
        with fold_device(self.training.fit, self.work_dir / "cache" / "gpu-locks") as index:
            choice = choose_device(self.training.fit, index)
            log.info("%s trains on %s", self.fold.name, choice.describe())
            train_fold(self.fold, table, paths, self.training, self.key(), tmp, choice)


def train_fold(fold: Fold, table: pd.DataFrame, image_paths: Mapping[str, Path] | None, training: TrainingParams,
               key: str, out: Path, choice: DeviceChoice) -> None:
    """Train ``fold`` on ``choice`` and write its files into ``out`` (see the module docstring)."""
    import torch  # torch: only when a fold trains
    from safetensors.torch import save_file  # torch: only when a fold trains

    from survival_model.models.losses import risk_score  # torch: only when a fold trains
    from survival_model.training.loop import predict_outputs, train_model  # torch: only when a fold trains

    def progress(r: EpochRecord) -> None:
        log.info("%s epoch %d/%d: train loss %.4f, stopping loss %.4f, C-index %.3f (%.1f s)", fold.name, r.epoch,
                 training.fit.epochs, r.train_loss, r.stop_loss, r.stop_cindex, r.seconds)

    data = fold_arrays(table, fold, image_paths, training)
    sequence_channels = len(training.inputs.sequences)
    outcome = train_model(training.network, training.fit, training.augment, data.fit, data.stop,
                          sequence_channels=sequence_channels, choice=choice, progress=progress,
                          inner_tabular=data.inner_tabular)
    offset = _centre(outcome.model, training.network.objective, [data.fit, data.stop], choice)
    history = pd.DataFrame([r.__dict__ for r in outcome.history])
    best = history.loc[history["epoch"] == outcome.best_epoch].iloc[0]
    validation = data.validation
    val_outputs = predict_outputs(outcome.model, validation, choice)  # the validation patients, scored once
    val_risk = risk_score(training.network.objective, torch.from_numpy(val_outputs), outcome.centre).numpy()
    summary = {
        "patients_fit": len(data.fit), "patients_stop": len(data.stop), "patients_validation": len(validation),
        "deaths_fit": int(data.fit.event.sum()), "deaths_stop": int(data.stop.event.sum()),
        "deaths_validation": int(validation.event.sum()),
        "epochs": int(history["epoch"].max()), "best_epoch": outcome.best_epoch,
        "stopped_early": outcome.stopped_early, "selection": "stopping patients (inside the fold's training set)",
        "stop_cindex": float(best["stop_cindex"]), "stop_loss": float(best["stop_loss"]),
        "train_loss": float(best["train_loss"]),
        "validation_cindex": harrell_c(val_risk, validation.time_days, validation.event) if len(validation)
        else float("nan"),
        "tabular_penalty": outcome.tabular_penalty, "penalties": outcome.penalties, "output_offset": offset,
        "image_gain": asdict(outcome.image_gain) if outcome.image_gain is not None else None,
        "seconds": float(history["seconds"].sum()), "data_wait_share": outcome.data_wait_share,
        "device": outcome.device, "threads": training.fit.threads or torch.get_num_threads(),
        "patients_per_second": float(history["patients"].iloc[1:].sum() / max(history["seconds"].sum(), 1e-9)),
    }
    config = {
        "fold": fold.name, "key": key, "network": training.network.model_dump(mode="json"),
        "in_chans": int(data.fit.images.shape[2]) if data.fit.images is not None else 0,
        "n_tabular": len(data.names), "tabular_features": data.names, "centre": outcome.centre,
        "channels": [*training.inputs.sequences, *training.inputs.mask_channels], "summary": summary,
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in outcome.model.state_dict().items()},
              str(out / "model.safetensors"))
    write_json(config, out / "config.json")
    joblib.dump(data.pipeline, out / "tabular.joblib")
    write_text(history.to_csv(index=False), out / "history.csv")
    write_parquet(pd.DataFrame({"case_id": list(validation.case_ids), "time_days": validation.time_days,
                                "event": validation.event, "risk": val_risk.astype(float),
                                **{f"output_{i}": val_outputs[:, i].astype(float)
                                   for i in range(val_outputs.shape[1])}}), out / "validation.parquet")
    log.info("fold %s: kept epoch %d of %d (chosen on %d stopping patients), validation C-index %.3f",
             fold.name, outcome.best_epoch, summary["epochs"], len(data.stop), summary["validation_cindex"])


def _cpu() -> DeviceChoice:
    import torch  # torch: only where a fold model predicts

    from survival_model.training.loop import DeviceChoice  # torch: only where a fold model predicts

    return DeviceChoice(torch.device("cpu"), None, False, False)


@dataclass
class FoldModel:
    """A stored fold loaded for prediction."""

    network: HybridSurvivalNet
    pipeline: Pipeline | None
    config: dict[str, Any]

    @property
    def objective(self) -> str:
        return str(self.config["network"]["objective"])


def load_fold_model(fold: FoldResult) -> FoldModel:
    """Rebuild the network from ``config.json`` + ``model.safetensors`` and load the tabular pipeline."""
    from safetensors.torch import load_file  # torch: only where a fold model is loaded

    from survival_model.models.network import HybridSurvivalNet  # torch, timm: only where a fold model is loaded

    config = read_json(fold.folder / "config.json")
    params = NetworkParams.model_validate({**config["network"], "pretrained_weights": None})
    network = HybridSurvivalNet(params, int(config["in_chans"]), int(config["n_tabular"]), region_channels(config))
    network.load_state_dict(load_file(str(fold.folder / "model.safetensors")))
    network.eval()
    pipeline = joblib.load(fold.folder / "tabular.joblib")
    return FoldModel(network, pipeline, config)


def fold_outputs(model: FoldModel, frame: pd.DataFrame, images: np.ndarray | None,
                 choice: DeviceChoice | None = None) -> np.ndarray:
    """The fold model's raw outputs for the rows of ``frame`` (and their stacked image inputs); the
    outcome columns are not needed."""
    from survival_model.training.loop import predict_outputs  # torch: only where a fold model predicts

    tabular = None
    if model.pipeline is not None:
        tabular = np.asarray(model.pipeline.transform(frame), dtype=np.float32)
    n = len(frame)
    arrays = SurvivalArrays(tuple(str(c) for c in frame["case_id"]), np.ones(n), np.zeros(n, dtype=bool),
                            images if model.network.backbone is not None else None, tabular)
    return predict_outputs(model.network, arrays, choice or _cpu())
