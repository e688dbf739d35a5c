"""Training one network: a planted signal is learned, the same seed gives the same metrics, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survival_model.config import AugmentParams, FitParams, NetworkParams
from survival_model.errors import ConfigError
from survival_model.evaluation.metrics import harrell_c
from survival_model.models.losses import risk_score
from survival_model.training.data import SurvivalArrays
from survival_model.training.loop import choose_device, predict_outputs, torch_settings, train_model

NET = {"backbone": "test_efficientnet", "tabular_hidden": [16], "head_hidden": [16], "dropout": 0.0}
FIT = FitParams(epochs=12, batch_size=32, learning_rate=3e-3, patience=12, device="cpu", seed=5)


#: How much of the true risk each branch can see, per variant (an image-only model cannot see the table).
WEIGHTS = {"tabular": (1.5, 0.0), "image": (0.0, 1.5), "hybrid": (1.0, 1.0)}


def planted(n: int, seed: int, weights: tuple[float, float] = (1.0, 1.0)) -> tuple[SurvivalArrays, np.ndarray]:
    """Risk = w0 x tabular column 0 + w1 x the brightness of a square in the image (and noise columns)."""
    rng = np.random.default_rng(seed)
    tab_signal, img_signal = rng.standard_normal(n), rng.standard_normal(n)
    images = rng.normal(0, 0.3, (n, 2, 1, 16, 16)).astype(np.float32)
    images[:, :, 0, 5:11, 5:11] += img_signal[:, None, None, None].astype(np.float32) * 1.5
    tabular = np.column_stack([tab_signal, rng.standard_normal((n, 3))]).astype(np.float32)
    lp = weights[0] * tab_signal + weights[1] * img_signal
    event_time = rng.exponential(np.exp(-lp)) * 300 + 1
    censor = rng.uniform(100, 900, n)
    return SurvivalArrays(tuple(f"p{i}" for i in range(n)), np.minimum(event_time, censor), event_time <= censor,
                          images, tabular), lp


def fit(variant: str, objective: str = "cox", fit_params: FitParams = FIT) -> tuple[float, object, float]:
    train, _ = planted(160, 1, WEIGHTS[variant])
    validation, lp = planted(60, 2, WEIGHTS[variant])
    network = NetworkParams(**NET, variant=variant, objective=objective)  # type: ignore[arg-type]
    outcome = train_model(network, fit_params, AugmentParams(rotation_degrees=0), train, validation,
                          sequence_channels=1)
    outputs = predict_outputs(outcome.model, validation, choose_device(fit_params))
    risk = risk_score(network.objective, torch.from_numpy(outputs)).numpy()
    oracle = harrell_c(lp, validation.time_days, validation.event)
    return harrell_c(risk, validation.time_days, validation.event), outcome, oracle


@pytest.mark.parametrize(("variant", "objective"), [("tabular", "cox"), ("image", "cox"), ("hybrid", "mse"),
                                                    ("hybrid", "weibull")])
def test_a_tiny_model_learns_a_planted_signal(variant: str, objective: str) -> None:
    c_index, outcome, oracle = fit(variant, objective)
    assert c_index > 0.6, (variant, objective, c_index, oracle)
    assert outcome.best_epoch >= 1 and len(outcome.history) <= FIT.epochs  # type: ignore[attr-defined]


def test_the_same_seed_gives_the_same_curves_and_metrics() -> None:
    params = FIT.model_copy(update={"epochs": 3})
    first = fit("hybrid", fit_params=params)
    second = fit("hybrid", fit_params=params)
    curves = [[(r.train_loss, r.val_loss, r.val_cindex) for r in o.history] for o in (first[1], second[1])]  # type: ignore[attr-defined]
    assert curves[0] == curves[1]
    assert first[0] == second[0]
    other = fit("hybrid", fit_params=params.model_copy(update={"seed": 6}))
    assert [(r.train_loss,) for r in other[1].history] != [(c[0],) for c in curves[0]]  # type: ignore[attr-defined]


def test_early_stopping_keeps_the_best_epoch() -> None:
    _, outcome, _ = fit("tabular", fit_params=FIT.model_copy(update={"epochs": 30, "patience": 2, "min_epochs": 1}))
    history = outcome.history  # type: ignore[attr-defined]
    best = max(history, key=lambda r: r.val_cindex)
    assert outcome.best_epoch == best.epoch  # type: ignore[attr-defined]
    if outcome.stopped_early:  # type: ignore[attr-defined]
        assert len(history) == outcome.best_epoch + 2  # type: ignore[attr-defined]


def test_devices_and_settings() -> None:
    cpu = choose_device(FitParams(device="auto"))
    if not torch.cuda.is_available():
        assert cpu.device.type == "cpu" and cpu.amp_dtype is None and cpu.workers == 0
        with pytest.raises(ConfigError, match="no CUDA device"):
            choose_device(FitParams(device="cuda"))
    threads = torch.get_num_threads()
    with torch_settings(1, deterministic=True):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_a_fold_without_deaths_is_an_error() -> None:
    train, _ = planted(20, 1)
    no_deaths = SurvivalArrays(train.case_ids, train.time_days, np.zeros(20, bool), train.images, train.tabular)
    with pytest.raises(ConfigError, match="one death"):
        train_model(NetworkParams(**NET, variant="tabular"), FIT, AugmentParams(), no_deaths, no_deaths,  # type: ignore[arg-type]
                    sequence_channels=1)
