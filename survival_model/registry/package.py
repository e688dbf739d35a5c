"""The packaged model: everything needed to predict for a new patient, in one folder without pickles.

A package is built from a training stage's fold ensemble (``survival_model.training.stage``) by the stage
:class:`BuildPackage`, in ``<work_dir>/registry/packages/<key[:16]>/``, and holds:

- ``folds/<fold>/model.safetensors`` and ``config.json``: each fold's network weights (no pickle) and what
  rebuilds it (network params, channels, tabular width, output centre);
- ``folds/<fold>/tabular.skops``: the fold's fitted tabular pipeline in skops' format, loaded with an
  explicit list of trusted types (:data:`TRUSTED_TYPES`): loading refuses any other type, so a tampered
  file cannot run arbitrary code the way a pickle can;
- ``package.json``: the preprocessing, feature and image-input parameters the model was trained with
  (a prediction must compute its inputs the same way), the input schema (columns and kinds), the
  Breslow baseline hazard fitted on the development patients' *out-of-fold* risks (each fold's risks
  centred on its training patients, so the pooled risks are on one scale; a patient's survival curve is
  the mean of the fold models' curves through that baseline), the risk-group thresholds (quantiles of the same
  out-of-fold risks, fixed at training), the code version, the training stage key, the data
  fingerprint and the development / test patients (pseudonymous ids: a gate re-scoring this model
  leaves out patients it trained on).

:class:`PackagedModel` loads a package and predicts per patient: risk score, risk group, survival
probability at the configured months, predicted median survival and the middle half of the predicted
survival-time distribution (the times where the curve crosses 0.75 and 0.25).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import joblib
import numpy as np
import numpy.typing as npt
import pandas as pd
from sksurv.linear_model.coxph import BreslowEstimator

from survival_model.config import FeaturesParams, ImageInputParams, NetworkParams, Params, PreprocessParams
from survival_model.errors import SurvivalModelError
from survival_model.evaluation.scores import survival_from
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import read_json, write_json
from survival_model.models.inputs import load_image_input
from survival_model.stage import Stage
from survival_model.training.folds import FoldModel, fold_outputs, region_channels
from survival_model.training.splits import Splits

if TYPE_CHECKING:
    from survival_model.features.stage import FeatureTable
    from survival_model.training.stage import TrainingResult

log = logging.getLogger(__name__)

#: 2: folds centred on their training patients (``output_offset``), survival as the mixture of the folds' curves.
#: 3: mse and weibull risks on the absolute (log-days) scale, their fold's centre added; a cox package of format 2
#: is read the same way.
FORMAT = 3
PACKAGE_FILE = "package.json"
#: The column of a prediction input that holds a patient's image input (a ``.npy`` written by
#: ``survival_model.models.inputs.ImageInput``); needed by networks with an image branch.
IMAGE_COLUMN = "image_input"
DAYS_PER_MONTH = 365.25 / 12
#: The only types a packaged tabular pipeline may contain beyond skops' defaults (scikit-learn's
#: estimators, numpy arrays): ours, and the three library types our pipeline uses. Anything else in a
#: ``tabular.skops`` file makes loading fail.
TRUSTED_TYPES = (
    "builtins.object",
    "numpy.dtype",
    "sklearn.compose._column_transformer.make_column_selector",
    "survival_model.models.tabular.ConcordanceSelector",
    "survival_model.models.tabular.FeatureColumns",
    "survival_model.features.harmonise.SiteHarmoniser",
)


class PackageError(SurvivalModelError):
    """A model package is missing, incomplete, of another format, or cannot predict these inputs."""


def package_code_version() -> str:
    return code_version("survival_model.registry", "survival_model.training", "survival_model.models")


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _skops_dump(pipeline: Any, path: Path) -> None:
    import skops.io as sio  # skops imports torch and dask (~2 s): only when a package is built

    sio.dump(pipeline, path)


def _skops_load(path: Path) -> Any:
    import skops.io as sio  # skops imports torch and dask (~2 s): only when a package is loaded

    unknown = [t for t in sio.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
    if unknown:
        raise PackageError(f"{path}: refusing to load untrusted type(s) {unknown} (see TRUSTED_TYPES)")
    return sio.load(path, trusted=list(TRUSTED_TYPES))


def input_schema(table: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, str]]:
    """``[{"name", "kind"}]``: ``number`` (booleans as 0/1) or ``text``, from the feature table's dtypes."""
    out = []
    for column in columns:
        if column not in table.columns:
            raise PackageError(f"the model's input column {column!r} is not in the feature table")
        dtype = table[column].dtype
        numeric = pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        out.append({"name": column, "kind": "number" if numeric else "text"})
    return out


def _pipeline_columns(pipeline: Any) -> list[str]:
    columns = list(pipeline.named_steps["columns"].columns_)
    if pipeline.named_steps["harmonise"] != "passthrough":
        columns = ["site", *[c for c in columns if c != "site"]]
    return columns


def breslow(risk: npt.NDArray[np.float64], time: npt.NDArray[np.float64],
            event: npt.NDArray[np.bool_]) -> dict[str, list[float]]:
    """The Breslow cumulative baseline hazard at its event times (scikit-survival's estimator)."""
    estimator = BreslowEstimator().fit(np.asarray(risk, dtype=float), np.asarray(event, dtype=bool),
                                       np.asarray(time, dtype=float))
    hazard = estimator.cum_baseline_hazard_
    return {"times": [float(t) for t in hazard.x], "cumulative_hazard": [float(h) for h in hazard.y]}


def training_key(trained: TrainingResult) -> str:
    """The full content key of a training stage's result (its folder is named by the key's first digits)."""
    return str(read_json(trained.folder / "result.json")["key"])


@dataclass(frozen=True)
class BuildPackage(Stage[Path]):
    """The fold ensemble of ``trained`` as a self-contained package in
    ``<work_dir>/registry/packages/<key[:16]>/`` (see the module docstring).

    The key is made of the training stage's key (the data, the splits, every training setting, the code), the
    package format and code version, and what the package adds: the risk groups, the horizons, and the
    preprocessing and feature settings a prediction must compute its inputs with. The other fields are not part
    of it, each being decided by the training stage's key: the feature table it trained on (whose key holds
    the cohort's fingerprint, ``data_fingerprint``, and the pseudonymous ids, made with the key whose
    fingerprint is ``pseudonym_key_fingerprint``) and the image-input settings (``inputs``, training params)."""

    name: ClassVar[str] = "package-model"
    trained: TrainingResult
    table: FeatureTable
    preprocess: PreprocessParams
    features: FeaturesParams
    risk_groups: int
    horizons_months: tuple[float, ...]
    inputs: ImageInputParams
    data_fingerprint: str
    #: The fingerprint of the key the case ids were made with (a gate compares it with the run's before leaving
    #: the champion's training patients out of the test set).
    pseudonym_key_fingerprint: str | None
    work_dir: Path

    @classmethod
    def of(cls, trained: TrainingResult, table: FeatureTable, params: Params, data_fingerprint: str,
           pseudonym_key_fingerprint: str | None = None) -> BuildPackage:
        """The package of ``trained`` with this run's settings."""
        return cls(trained, table, params.preprocess, params.features, params.registry.risk_groups,
                   tuple(params.registry.horizons_months), params.training.inputs, data_fingerprint,
                   pseudonym_key_fingerprint, params.work_dir)

    def make_key(self) -> str:
        return stable_hash("package", FORMAT, package_code_version(), training_key(self.trained), self.risk_groups,
                           list(self.horizons_months), self.preprocess.model_dump(mode="json"),
                           self.features.model_dump(mode="json"))

    def place(self) -> tuple[str, ...]:
        return ("registry", "packages")

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / PACKAGE_FILE]

    def load(self, folder: Path) -> Path | None:
        return folder if (folder / PACKAGE_FILE).is_file() else None

    def compute(self, tmp: Path) -> None:
        from survival_model.evaluation.plots import risk_groups  # matplotlib: only when a package is built
        from survival_model.models.losses import ensemble_centre  # torch: only when a package is built

        trained, table = self.trained, self.table.table()
        splits = Splits.load(trained.splits_path)
        oof = trained.out_of_fold().astype(float)
        dev = table.set_index("case_id").loc[list(splits.development)]
        oof = oof.reindex(dev.index)
        if oof.isna().any():
            raise PackageError(f"{int(oof.isna().sum())} development patient(s) have no out-of-fold risk")
        dev_event = dev["event"].astype(int).to_numpy() == 1
        dev_time = dev["time_days"].to_numpy(dtype=float)
        risks: npt.NDArray[np.float64] = np.asarray(oof, dtype=np.float64)
        thresholds, _ = risk_groups(risks, np.zeros(0), self.risk_groups)
        configs = [read_json(f.folder / "config.json") for f in trained.folds]
        network = NetworkParams.model_validate({**configs[0]["network"], "pretrained_weights": None})
        columns: list[str] = []
        for fold in trained.folds:
            target = tmp / "folds" / fold.name
            target.mkdir(parents=True)
            shutil.copy2(fold.folder / "model.safetensors", target / "model.safetensors")
            shutil.copy2(fold.folder / "config.json", target / "config.json")
            pipeline = joblib.load(fold.folder / "tabular.joblib")  # written by this pipeline's own training stage
            if pipeline is not None:
                _skops_dump(pipeline, target / "tabular.skops")
                columns = list(dict.fromkeys([*columns, *_pipeline_columns(pipeline)]))
        radiomics = self.features.radiomics
        features = self.features.model_dump(mode="json")
        if radiomics.params_file is not None:  # the settings travel with the model, not as a path
            shutil.copy2(radiomics.params_file, tmp / "radiomics.yaml")
            features["radiomics"]["params_file"] = "radiomics.yaml"
        write_json({
            "format": FORMAT, "code_version": package_code_version(), "training_key": training_key(trained),
            "data_fingerprint": self.data_fingerprint, "splits_fingerprint": splits.fingerprint,
            "name": trained.name, "objective": configs[0]["network"]["objective"],
            "network": network.model_dump(mode="json"), "variant": network.variant, "backbone": network.backbone,
            "folds": [f.name for f in trained.folds],
            "centre": ensemble_centre(configs[0]["network"]["objective"], [float(c["centre"]) for c in configs]),
            "channels": list(configs[0]["channels"]),
            "uses_images": network.variant in ("hybrid", "image"),
            "inputs": self.inputs.model_dump(mode="json"),
            "preprocess": self.preprocess.model_dump(mode="json"),
            "features": features,
            "input_schema": input_schema(table, columns),
            "breslow": breslow(risks, dev_time, dev_event),
            "risk_thresholds": [float(t) for t in thresholds],
            "horizons_months": list(self.horizons_months),
            "development_case_ids": list(splits.development),
            "test_case_ids": list(splits.test),
            "test_metrics": trained.metrics["test"],
            "pseudonym_key_fingerprint": self.pseudonym_key_fingerprint,
        }, tmp / PACKAGE_FILE)
        log.info("model package of %s written", trained.name)


# --------------------------------------------------------------------------------------------------
# Loading and predicting
# --------------------------------------------------------------------------------------------------


def read_info(folder: Path) -> dict[str, Any]:
    """A package's ``package.json`` (checked for its format), without loading the networks."""
    path = Path(folder) / PACKAGE_FILE
    if not path.is_file():
        raise PackageError(f"{folder} is not a model package (no {PACKAGE_FILE})")
    info: dict[str, Any] = read_json(path)
    if info.get("format") != FORMAT and not (info.get("format") == 2 and info.get("objective") == "cox"):
        raise PackageError(f"{folder}: package format {info.get('format')} is not {FORMAT}: it was built by another "
                           "version of survival_model and cannot be scored by this one; run the pipeline to register "
                           "a model in this format (a champion in the old format is then replaced by hand: "
                           "`survival-model models promote N --reason ...`)")
    return info


def package_settings(info: Mapping[str, Any],
                     folder: Path) -> tuple[PreprocessParams, FeaturesParams, ImageInputParams]:
    """How the package's inputs were made: its preprocessing, feature and image-input parameters."""
    features = dict(info["features"])
    radiomics = dict(features["radiomics"])
    if radiomics.get("params_file"):
        radiomics["params_file"] = str(Path(folder) / radiomics["params_file"])
    return (PreprocessParams.model_validate(info["preprocess"]),
            FeaturesParams.model_validate({**features, "radiomics": radiomics}),
            ImageInputParams.model_validate(info["inputs"]))


def package_params(params: Params, folder: Path) -> Params:
    """``params`` with the package's preprocessing, feature and image-input settings."""
    preprocess, features, inputs = package_settings(read_info(folder), folder)
    training = params.training.model_copy(update={"inputs": inputs})
    return params.model_copy(update={"preprocess": preprocess, "features": features, "training": training})


def same_inputs(params: Params, folder: Path) -> bool:
    """Whether ``params`` computes the package's inputs as it was trained on (the stages can be shared)."""
    preprocess, features, inputs = package_settings(read_info(folder), folder)
    return (preprocess == params.preprocess and features == params.features
            and inputs == params.training.inputs)


def _as_kind(values: pd.Series, kind: str) -> pd.Series:
    """One input column as the tabular pipeline was fitted on it: ``number`` as float (booleans 0/1, missing
    NaN), ``text`` as objects (missing NaN)."""
    if kind == "number":
        if pd.api.types.is_bool_dtype(values.dtype):
            values = values.astype("Float64")
        return pd.to_numeric(values, errors="coerce").astype(float)
    return values.astype(object).where(values.notna(), np.nan)


def scorable_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The prediction-input rows a package can score: those with an image input where the model has an image
    branch (a patient whose image input failed has none, and the package refuses a frame with such a row)."""
    if IMAGE_COLUMN not in frame.columns:
        return frame
    return frame[frame[IMAGE_COLUMN].notna()].reset_index(drop=True)


def input_columns(info: Mapping[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """``case_id`` and the package's input columns of ``frame`` (feature-table rows or a prediction input),
    each converted to its kind (:func:`_as_kind`)."""
    columns = [c["name"] for c in info["input_schema"]]
    missing = [c for c in ("case_id", *columns) if c not in frame.columns]
    if missing:
        raise PackageError(f"the model needs column(s) {missing}, which its input lacks")
    out = pd.DataFrame({"case_id": frame["case_id"].astype(str).to_numpy()})
    for spec in info["input_schema"]:
        out[spec["name"]] = _as_kind(frame[spec["name"]], spec["kind"]).to_numpy()
    return out


def model_input(info: Mapping[str, Any], table: pd.DataFrame,
                image_paths: Mapping[str, Path] | None = None) -> pd.DataFrame:
    """The prediction input for feature-table rows: :func:`input_columns` and, for image networks,
    ``image_input`` paths."""
    out = input_columns(info, table)
    if info["uses_images"]:
        paths = image_paths or {}
        out[IMAGE_COLUMN] = [str(paths[c]) if c in paths else None for c in out["case_id"]]
    return out


def _load_fold(folder: Path) -> FoldModel:
    from safetensors.torch import load_file  # torch: only when a package is loaded

    from survival_model.models.network import HybridSurvivalNet  # torch, timm: only when a package is loaded

    config = read_json(folder / "config.json")
    network_params = NetworkParams.model_validate({**config["network"], "pretrained_weights": None})
    network = HybridSurvivalNet(network_params, int(config["in_chans"]), int(config["n_tabular"]),
                                region_channels(config))
    network.load_state_dict(load_file(str(folder / "model.safetensors")))
    network.eval()
    pipeline = _skops_load(folder / "tabular.skops") if (folder / "tabular.skops").is_file() else None
    return FoldModel(network, pipeline, config)


@dataclass
class PackagedModel:
    """A loaded package (see the module docstring)."""

    folder: Path
    info: dict[str, Any]
    folds: list[FoldModel]

    @classmethod
    def load(cls, folder: Path) -> PackagedModel:
        folder = Path(folder)
        info = read_info(folder)
        if info["code_version"] != package_code_version():
            log.warning("the package %s was built by code version %s, this is %s: predictions may differ",
                        folder, info["code_version"], package_code_version())
        return cls(folder, info, [_load_fold(folder / "folds" / name) for name in info["folds"]])

    @property
    def uses_images(self) -> bool:
        return bool(self.info["uses_images"])

    @property
    def input_columns(self) -> list[str]:
        return [c["name"] for c in self.info["input_schema"]]

    def input_params(self) -> ImageInputParams:
        return package_settings(self.info, self.folder)[2]

    def model_input(self, table: pd.DataFrame, image_paths: Mapping[str, Path] | None = None) -> pd.DataFrame:
        return model_input(self.info, table, image_paths)

    def fold_outputs(self, frame: pd.DataFrame) -> list[npt.NDArray[np.float32]]:
        """Each fold model's raw outputs for prediction-input rows (see :meth:`model_input`)."""
        features = self.features(frame)  # checks the columns
        images = None
        if self.uses_images:
            if IMAGE_COLUMN not in frame.columns or frame[IMAGE_COLUMN].isna().any():
                raise PackageError(f"this {self.info['variant']} model needs an {IMAGE_COLUMN!r} path for every row")
            images = np.stack([load_image_input(Path(p)) for p in frame[IMAGE_COLUMN]]).astype(np.float32)
        return [fold_outputs(model, features, images) for model in self.folds]

    def outputs(self, frame: pd.DataFrame) -> npt.NDArray[np.float32]:
        """The fold ensemble's mean raw output for prediction-input rows."""
        mean: npt.NDArray[np.float32] = np.mean(self.fold_outputs(frame), axis=0).astype(np.float32)
        return mean

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Prediction-input rows in the dtypes the tabular pipeline was fitted on."""
        return input_columns(self.info, frame)

    def _risk_of(self, outputs: npt.NDArray[np.float32], centre: float) -> npt.NDArray[np.float64]:
        import torch  # torch: only when a package predicts

        from survival_model.models.losses import risk_score  # torch: only when a package predicts

        return risk_score(self.info["objective"], torch.from_numpy(outputs), centre).numpy().astype(float)

    def risk(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        """The ensemble's risk (of the mean output; each fold centred on its training patients)."""
        return self._risk_of(self.outputs(frame), float(self.info["centre"]))

    def fold_risks(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        """Each fold model's risk, ``(patients, folds)``: on the scale of the out-of-fold risks the packaged
        baseline hazard was fitted on."""
        return np.column_stack([self._risk_of(out, float(fold.config["centre"]))
                                for out, fold in zip(self.fold_outputs(frame), self.folds, strict=True)])

    def survival(self, risk: npt.NDArray[np.float64], times: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """S(t) at ``times``, ``(patients, times)``: exp(-H0(t) exp(risk)) for one risk per patient, or the mean
        of the folds' curves for per-fold risks ``(patients, folds)`` (:meth:`fold_risks`: the ensemble's curve).
        H0 is the packaged Breslow baseline (fitted on the development patients' out-of-fold risks), a step
        function, flat after the last development time (where the curve is not known to change)."""
        base = self.info["breslow"]
        grid, hazard = np.asarray(base["times"], dtype=float), np.asarray(base["cumulative_hazard"], dtype=float)
        position = np.searchsorted(grid, np.asarray(times, dtype=float), side="right") - 1
        h0 = np.where(position >= 0, hazard[np.clip(position, 0, None)], 0.0)
        return survival_from(h0, np.asarray(risk, dtype=float))

    def crossing(self, risk: npt.NDArray[np.float64], level: float) -> npt.NDArray[np.float64]:
        """The first development event time at which S(t) <= ``level`` (NaN: not reached); ``risk`` as in
        :meth:`survival`."""
        grid = np.asarray(self.info["breslow"]["times"], dtype=float)
        below = self.survival(risk, grid) <= level
        return np.where(below.any(axis=1), grid[np.argmax(below, axis=1)], np.nan)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per patient: ``case_id, risk, risk_group (1 = lowest), survival_<m>m, median_days,
        interval_low_days, interval_high_days`` (the middle half of the predicted survival time: a 50%
        prediction interval; NaN where the curve does not fall that low within the development follow-up)."""
        outputs = self.fold_outputs(frame)
        risk = self._risk_of(np.mean(outputs, axis=0).astype(np.float32), float(self.info["centre"]))
        members = np.column_stack([self._risk_of(out, float(fold.config["centre"]))
                                   for out, fold in zip(outputs, self.folds, strict=True)])
        thresholds = np.asarray(self.info["risk_thresholds"], dtype=float)
        out = pd.DataFrame({"case_id": frame["case_id"].astype(str).to_numpy(), "risk": risk,
                            "risk_group": np.searchsorted(thresholds, risk, side="right").astype(np.int64) + 1})
        months = [float(m) for m in self.info["horizons_months"]]
        probabilities = self.survival(members, np.array(months) * DAYS_PER_MONTH)
        for i, m in enumerate(months):
            out[f"survival_{m:g}m"] = probabilities[:, i]
        out["median_days"] = self.crossing(members, 0.5)
        out["interval_low_days"] = self.crossing(members, 0.75)
        out["interval_high_days"] = self.crossing(members, 0.25)
        return out
