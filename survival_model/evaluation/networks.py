"""A trained network (a training stage's fold ensemble) as the evaluation sees it.

- :func:`network_run`: its out-of-fold development risks, the ensemble's test risks (and predicted days
  where the objective gives them, and each fold's test risks, whose survival curves the ensemble's curve
  averages) and, per fold, the fold model's risks on its own training rows and on its validation rows, so
  every score can be computed per fold exactly as for the baselines (the Breslow curves of a fold from its
  training rows). Every fold's risks are centred on its training patients (``output_offset``).
- :func:`explainer`: the fold models loaded for permutation importance and Grad-CAM.

It imports torch: ``survival_model.evaluation.stage`` imports it only where the stage computes, so the stage's
key and reuse need no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from survival_model.config import NetworkParams
from survival_model.evaluation.explain import EnsembleExplainer
from survival_model.evaluation.stage import NetworkRun, rows
from survival_model.imageio import read_json
from survival_model.models.losses import ensemble_centre, risk_score
from survival_model.training.arrays import stack_images
from survival_model.training.folds import TrainingError, fold_outputs, load_fold_model, uses_images
from survival_model.training.splits import Splits
from survival_model.training.stage import TrainingResult


def network_run(trained: TrainingResult, table: pd.DataFrame, image_paths: Mapping[str, Path] | None) -> NetworkRun:
    """See the module docstring; ``image_paths`` is needed for networks with an image branch."""
    splits = Splits.load(trained.splits_path)
    by_name = {f.name: f for f in splits.folds}
    predictions = trained.predictions().set_index("case_id")
    folds = []
    for result in trained.folds:
        fold = by_name.get(result.name)
        if fold is None:
            raise TrainingError(f"fold {result.name} is not in the splits {trained.splits_path}")
        model = load_fold_model(result)
        images = None
        if model.network.backbone is not None:
            if image_paths is None:
                raise TrainingError(f"{trained.name}: the image inputs are needed to score the fold models")
            images = stack_images(image_paths, fold.train)
        outputs = fold_outputs(model, rows(table, fold.train), images)
        train_risk = risk_score(model.objective, torch.from_numpy(outputs),  # type: ignore[arg-type]
                                float(model.config["centre"])).numpy().astype(float)
        validation = pd.read_parquet(result.folder / "validation.parquet").set_index("case_id")["risk"]
        folds.append((pd.Series(train_risk, index=list(fold.train)), validation.astype(float)))
    days = predictions["predicted_days"].astype(float) if "predicted_days" in predictions else None
    members = predictions[[f"risk_{f.name}" for f in trained.folds]].astype(float)
    return NetworkRun(trained.name, trained.out_of_fold().astype(float), predictions["risk"].astype(float), days,
                      tuple(folds), members, str(trained.metrics["variant"]))


def explainer(trained: TrainingResult) -> EnsembleExplainer:
    """The fold models of ``trained``, ready for permutation importance and Grad-CAM."""
    models = [load_fold_model(f) for f in trained.folds]
    configs = [read_json(f.folder / "config.json") for f in trained.folds]
    objectives = {m.objective for m in models}
    if len(objectives) != 1:
        raise TrainingError(f"the folds were trained with different objectives: {sorted(objectives)}")
    objective = objectives.pop()
    return EnsembleExplainer(models, objective, ensemble_centre(objective, [float(c["centre"]) for c in configs]),  # type: ignore[arg-type]
                             list(configs[0]["channels"]))


def has_images(trained: TrainingResult) -> bool:
    config = read_json(trained.folds[0].folder / "config.json")
    return uses_images(NetworkParams.model_validate({**config["network"], "pretrained_weights": None}))
