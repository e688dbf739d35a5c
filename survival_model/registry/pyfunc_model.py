"""The MLflow pyfunc model, logged as code ("models from code"): MLflow stores this file with the model
and runs it on load, so no Python object is pickled into the model. It wraps
:class:`survival_model.registry.package.PackagedModel` around the ``package`` artifact (weights as
safetensors, tabular pipelines as skops with an explicit trusted-type list, the rest JSON). The library it
imports travels with the model too (``code/survival_model``, put first on ``sys.path`` by MLflow before this file
runs): the model loads where this project is not installed (``survival_model.registry.registry.log_model``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from survival_model.registry.package import PackagedModel


class SurvivalPyfunc(PythonModel):
    """Input: one row per patient (``PackagedModel.model_input``); output: ``PackagedModel.predict``."""

    model: PackagedModel | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self.model = PackagedModel.load(Path(context.artifacts["package"]))

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.model is None:
            raise RuntimeError("the model's package is not loaded (MLflow calls load_context first)")
        return self.model.predict(pd.DataFrame(model_input))


mlflow.models.set_model(SurvivalPyfunc())
