"""Training one network: a planted signal is learned (scored on patients never used to choose anything), the same
seed gives the same metrics, exact full-batch gradients, the linear term is a Cox model, devices."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from sksurv.util import Surv

from survival_model.config import AugmentParams, FitParams, NetworkParams
from survival_model.errors import ConfigError
from survival_model.metrics import harrell_c
from survival_model.models.losses import cox_loss, risk_score
from survival_model.training.data import SurvivalArrays
from survival_model.training.loop import (
    choose_device,
    derived_seed,
    full_batch_step,
    image_gain,
    predict_outputs,
    torch_settings,
    train_model,
)


def global_net(**settings: Any) -> NetworkParams:
    """Network settings with the image branch's globally pooled features (these tests were written for them;
    the default pools region features, which needs mask channels)."""
    return NetworkParams(**{"image_features": "global", **settings})

NET = {"backbone": "test_efficientnet", "image_bottleneck": 8, "head_hidden": [16], "dropout": 0.0}
FIT = FitParams(epochs=12, learning_rate=1e-2, patience=12, device="cpu", seed=5)


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


def fit(variant: str, objective: str = "cox", fit_params: FitParams = FIT, fusion: str = "additive",
        weights: tuple[float, float] | None = None) -> tuple[float, object, float]:
    """Train on 120 patients, choose on 40 stopping patients, score on 60 validation patients never seen."""
    weights = weights or WEIGHTS[variant]
    train, _ = planted(120, 1, weights)
    stop, _ = planted(40, 3, weights)
    validation, lp = planted(60, 2, weights)
    network = global_net(**NET, variant=variant, objective=objective, fusion=fusion,  # type: ignore[arg-type]
                            tabular_hidden=[] if fusion == "additive" else [16])
    outcome = train_model(network, fit_params, AugmentParams(rotation_degrees=0), train, stop, sequence_channels=1)
    outputs = predict_outputs(outcome.model, validation, choose_device(fit_params))
    risk = risk_score(network.objective, torch.from_numpy(outputs), outcome.centre).numpy()
    oracle = harrell_c(lp, validation.time_days, validation.event)
    return harrell_c(risk, validation.time_days, validation.event), outcome, oracle


@pytest.mark.parametrize(("variant", "objective", "fusion"), [
    ("hybrid", "cox", "additive"),  # the default network
    ("tabular", "cox", "additive"), ("image", "cox", "additive"), ("hybrid", "cox", "concat"),
    ("hybrid", "mse", "additive"), ("hybrid", "weibull", "additive")])
def test_a_tiny_model_learns_a_planted_signal(variant: str, objective: str, fusion: str) -> None:
    c_index, outcome, oracle = fit(variant, objective, fusion=fusion)
    assert c_index > 0.6 and c_index > oracle - 0.12, (variant, objective, c_index, oracle)
    assert len(outcome.history) <= FIT.epochs + 1  # type: ignore[attr-defined]
    # the image term earned its place: an epoch after the tabular one, clear of its standard error (the weibull
    # network's image term gains 0.004 nats in 12 epochs here, SE 0.010: not kept, and rightly so)
    if variant == "hybrid" and fusion == "additive" and objective != "weibull":
        assert outcome.best_epoch >= 1 and outcome.tabular_penalty in FIT.tabular_penalties  # type: ignore[attr-defined]


def test_the_hybrid_beats_its_own_tabular_term_when_the_image_holds_signal() -> None:
    hybrid, _, oracle = fit("hybrid")
    tabular, _, _ = fit("tabular", weights=WEIGHTS["hybrid"])
    # the tabular-only model sees half the true risk (C 0.729 here, oracle 0.774): the hybrid adds the image
    assert hybrid > tabular + 0.015, (hybrid, tabular, oracle)  # an unused image term would give +0


def test_the_same_seed_gives_the_same_curves_and_metrics() -> None:
    params = FIT.model_copy(update={"epochs": 3})
    first = fit("hybrid", fit_params=params)
    second = fit("hybrid", fit_params=params)
    curves = [[(r.train_loss, r.stop_loss, r.stop_cindex) for r in o.history] for o in (first[1], second[1])]  # type: ignore[attr-defined]
    assert curves[0] == curves[1]
    assert first[0] == second[0]
    other = fit("hybrid", fit_params=params.model_copy(update={"seed": 6}))
    assert [(r.train_loss,) for r in other[1].history] != [(c[0],) for c in curves[0]]  # type: ignore[attr-defined]


def test_the_epoch_kept_is_the_best_on_the_stopping_patients() -> None:
    update = {"epochs": 30, "patience": 2, "min_epochs": 1, "image_gain_se": 0.0}  # 0: the best epoch, always
    _, outcome, _ = fit("hybrid", fit_params=FIT.model_copy(update=update))
    history = outcome.history  # type: ignore[attr-defined]
    best = min(history, key=lambda r: (r.stop_loss, r.epoch))
    assert outcome.best_epoch == best.epoch  # type: ignore[attr-defined]
    if outcome.stopped_early:  # type: ignore[attr-defined]
        assert len(history) == outcome.best_epoch + 3  # epochs 0..best, then `patience` worse ones  # type: ignore[attr-defined]


def test_an_image_epoch_is_kept_only_when_it_beats_the_tabular_term_by_its_standard_error() -> None:
    params = FIT.model_copy(update={"epochs": 6})
    _, kept, _ = fit("hybrid", fit_params=params)  # the images hold half the true risk: a clear gain
    gain = kept.image_gain  # type: ignore[attr-defined]
    assert gain.kept and kept.best_epoch == gain.best_epoch >= 1  # type: ignore[attr-defined]
    assert gain.honest_gain > params.image_gain_se * gain.standard_error and gain.standard_error > 0
    # the same training, a bar no gain can clear: epoch 0 (the tabular term alone) is kept
    _, refused, _ = fit("hybrid", fit_params=params.model_copy(update={"image_gain_se": 1e6}))
    assert refused.best_epoch == 0 and not refused.image_gain.kept  # type: ignore[attr-defined]
    assert refused.image_gain.gain == pytest.approx(gain.gain)  # type: ignore[attr-defined]
    validation, _ = planted(30, 2, WEIGHTS["hybrid"])
    shuffled = dataclasses.replace(validation, images=validation.images[::-1].copy())  # type: ignore[index]
    device = choose_device(params)
    assert np.array_equal(predict_outputs(refused.model, validation, device),  # type: ignore[attr-defined]
                          predict_outputs(refused.model, shuffled, device))  # the image term is still zero


def test_the_image_gain_is_cross_fitted_on_known_cases() -> None:
    network, params = global_net(**NET), FIT.model_copy(update={"image_gain_resamples": 400})

    def signal(n: int, monitor: str = "loss") -> object:
        arrays, lp = planted(n, 4)
        best = lp[:, None].astype(np.float32)  # epoch 1: the true risk, against a constant at epoch 0
        return image_gain(network, params.model_copy(update={"monitor": monitor}), 0.0, arrays,
                          [np.zeros_like(best), best], 1)

    small, large = signal(100), signal(400)
    assert small.kept and small.honest_gain > 3 * small.standard_error > 0  # type: ignore[attr-defined]
    assert 0.35 < large.standard_error / small.standard_error < 0.7  # type: ignore[attr-defined]  # 1/sqrt(n): 0.5
    by_c = signal(100, "cindex")
    arrays, lp = planted(100, 4)
    assert by_c.gain == pytest.approx(harrell_c(lp, arrays.time_days, arrays.event) - 0.5)  # type: ignore[attr-defined]
    assert by_c.kept and 0 < by_c.honest_gain < 0.5  # type: ignore[attr-defined]
    same = [np.ones((100, 1), dtype=np.float32)] * 3
    flat = image_gain(network, params, 0.0, arrays, same, 2)
    assert (flat.gain, flat.honest_gain, flat.standard_error, flat.kept) == (0.0, 0.0, 0.0, False)


def test_the_best_of_many_noise_epochs_looks_better_than_epoch_0_and_is_not_kept() -> None:
    """30 epochs of noise on 24 stopping patients: the best of them beats epoch 0 on the patients that chose it
    (the winner's curse); scored on the half that did not choose it, it rarely does."""
    network, params = global_net(**NET), FIT.model_copy(update={"image_gain_resamples": 100})
    arrays, _ = planted(24, 5)
    time, event = torch.from_numpy(arrays.time_days), torch.from_numpy(arrays.event)

    def score(outputs: np.ndarray, rows: np.ndarray) -> float:
        return -float(cox_loss(torch.from_numpy(outputs[rows, 0]), time[rows], event[rows]))

    plain, kept, strict = [], [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        outputs = [np.zeros((24, 1), dtype=np.float32),
                   *[rng.normal(0, 0.3, (24, 1)).astype(np.float32) for _ in range(30)]]
        every = np.arange(24)
        best = int(np.argmax([score(o, every) for o in outputs]))
        gain = image_gain(network, params.model_copy(update={"image_gain_se": 0.0}), 0.0, arrays, outputs, best)
        kept.append(gain.kept)
        strict.append(image_gain(network, params.model_copy(update={"image_gain_se": 1.0}), 0.0, arrays, outputs,
                                 best).kept)
        # the plain rule: the best epoch's own gain against the bootstrap SE of that gain, on the same patients
        draws = [score(outputs[best], r) - score(outputs[0], r) for r in rng.integers(0, 24, (100, 24))]
        plain.append(best > 0 and gain.gain > np.std(draws, ddof=1))
    assert np.mean(plain) >= 0.7, plain  # chosen on the same patients: noise nearly always looks "better"
    assert np.mean(kept) <= 0.4, kept  # cross-fitted, kept when its gain is positive (the default)
    assert np.mean(strict) <= 0.2 and sum(strict) <= sum(kept), strict  # ... when above one standard error


def test_the_tabular_penalty_is_the_one_with_the_best_cross_validated_likelihood() -> None:
    _, outcome, _ = fit("tabular")
    tried = outcome.penalties  # type: ignore[attr-defined]
    assert set(tried) == {f"{p:g}" for p in FIT.tabular_penalties}
    assert tried[f"{outcome.tabular_penalty:g}"] == min(tried.values())  # type: ignore[attr-defined]


def test_the_penalty_cross_validation_scales_each_inner_fit_on_its_own_patients() -> None:
    train, _ = planted(80, 1, WEIGHTS["tabular"])
    stop, _ = planted(20, 3, WEIGHTS["tabular"])
    rows = np.concatenate([train.tabular, stop.tabular]) * 5.0 + 2.0  # type: ignore[list-item]
    seen: list[np.ndarray] = []

    def scaled(kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # a pipeline fitted on the inner fit's rows
        seen.append(kept.copy())
        mean, sd = rows[kept].mean(0), rows[kept].std(0)
        return ((rows[kept] - mean) / sd).astype(np.float32), ((rows - mean) / sd).astype(np.float32)

    network = global_net(**NET, variant="tabular")  # type: ignore[arg-type]
    inner = train_model(network, FIT, AugmentParams(), train, stop, sequence_channels=0, inner_tabular=scaled)
    assert len(seen) == FIT.tabular_cv_folds  # one pipeline per inner fold, every penalty scored on it
    held = [~k for k in seen]
    assert sum(int(h.sum()) for h in held) == 100 and np.logical_or.reduce(held).all()  # each patient held once
    plain = train_model(network, FIT, AugmentParams(), train, stop, sequence_channels=0)
    assert inner.penalties != plain.penalties  # the inner scaling entered the criterion


def test_a_chunked_step_has_exactly_the_full_batch_gradient() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.3),
                                torch.nn.Linear(8, 1))
    x = torch.randn(50, 4)
    time, event = torch.rand(50) * 100 + 1, torch.rand(50) < 0.7

    def gradient(chunk: int) -> list[torch.Tensor]:
        net = copy.deepcopy(model)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the step leaves the weights for comparison

        def loss(out: torch.Tensor) -> torch.Tensor:
            return cox_loss(out[:, 0], time, event)

        full_batch_step(net, optimizer, lambda rows: net(x[rows]), loss, 50, chunk, seed=7)
        return [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]

    # one chunk of 50 and 5 chunks of 10 (batch statistics per chunk: compare chunked with chunked)
    tens, again = gradient(10), gradient(10)
    assert all(torch.equal(a, b) for a, b in zip(tens, again, strict=True))  # same draws in both passes
    model.eval()  # no batch statistics, no dropout: every chunking is the one full-batch gradient
    full, chunked = gradient(50), gradient(7)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, chunked, strict=True))
    model.train()  # 50 patients in chunks of 49: 25 + 25, never a chunk of one patient (a batch norm rejects it)
    seen: list[int] = []
    net = copy.deepcopy(model)
    full_batch_step(net, torch.optim.SGD(net.parameters(), lr=0.0), lambda rows: seen.append(rows.stop - rows.start)
                    or net(x[rows]), lambda out: cox_loss(out[:, 0], time, event), 50, 49, seed=7)
    assert seen == [25, 25, 25, 25]  # two passes over the same two chunks


def test_the_linear_tabular_term_is_scikit_survivals_cox_model() -> None:
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    rng = np.random.default_rng(3)
    n = 150
    x = rng.standard_normal((n, 3))
    event_time = rng.exponential(np.exp(-(x @ np.array([0.8, -0.5, 0.0])))) * 365
    censor = rng.uniform(50, 900, n)
    time = np.maximum(np.minimum(event_time, censor).round(), 1.0)  # whole days: tied times (Efron)
    arrays = SurvivalArrays(tuple(f"p{i}" for i in range(n)), time, event_time <= censor, None,
                            x.astype(np.float32))
    network = global_net(variant="tabular")
    fit_params = FitParams(device="cpu", tabular_penalties=[0.0], tabular_iterations=500)
    no_stop = SurvivalArrays((), np.zeros(0), np.zeros(0, dtype=bool), None, np.zeros((0, 3), dtype=np.float32))
    outcome = train_model(network, fit_params, AugmentParams(), arrays, no_stop, sequence_channels=0)
    linear = outcome.model.tabular[-1]  # type: ignore[index]
    reference = CoxPHSurvivalAnalysis(alpha=0.0, ties="efron").fit(x, Surv.from_arrays(arrays.event, time))
    assert np.allclose(linear.weight.detach().numpy().ravel(), reference.coef_, atol=2e-3)


def test_devices_and_settings() -> None:
    cpu = choose_device(FitParams(device="auto"))
    if not torch.cuda.is_available():
        assert cpu.device.type == "cpu" and cpu.amp_dtype is None
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
        train_model(global_net(**NET, variant="tabular"), FIT, AugmentParams(), no_deaths, no_deaths,  # type: ignore[arg-type]
                    sequence_channels=1)


def _linear_cohort(n: int, seed: int) -> SurvivalArrays:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    event_time = rng.exponential(np.exp(-(x @ np.array([0.8, -0.5, 0.0])))) * 365
    censor = rng.uniform(50, 900, n)
    time = np.maximum(np.minimum(event_time, censor).round(), 1.0)
    return SurvivalArrays(tuple(f"p{seed}-{i}" for i in range(n)), time, event_time <= censor, None,
                          x.astype(np.float32))


def test_the_stopping_patients_judge_the_tabular_term_out_of_sample_and_the_kept_term_is_refitted_on_all() -> None:
    """Epoch 0's stopping loss is that of the term fitted on the fitting patients alone; the kept term is the Cox
    model of fitting and stopping patients together."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    train, stop = _linear_cohort(150, 3), _linear_cohort(60, 4)
    fit_params = FitParams(device="cpu", tabular_penalties=[0.0], tabular_iterations=500)
    outcome = train_model(global_net(variant="tabular"), fit_params, AugmentParams(), train, stop,
                          sequence_channels=0)

    def cox(*sets: SurvivalArrays) -> np.ndarray:
        x = np.concatenate([s.tabular for s in sets])  # type: ignore[misc]
        y = Surv.from_arrays(np.concatenate([s.event for s in sets]), np.concatenate([s.time_days for s in sets]))
        return CoxPHSurvivalAnalysis(alpha=0.0, ties="efron").fit(x, y).coef_  # type: ignore[no-any-return]

    on_fit = cox(train)
    out_of_sample = cox_loss(torch.from_numpy(stop.tabular @ on_fit), torch.from_numpy(stop.time_days),  # type: ignore[operator]
                             torch.from_numpy(stop.event)).item()
    assert outcome.history[0].stop_loss == pytest.approx(out_of_sample, abs=1e-3)
    linear = outcome.model.tabular[-1]  # type: ignore[index]
    assert np.allclose(linear.weight.detach().numpy().ravel(), cox(train, stop), atol=2e-3)
    assert not np.allclose(cox(train, stop), on_fit, atol=2e-3)  # the refit is a different model


def test_an_empty_stopping_set_trains_with_channels_last_inputs() -> None:
    """On CUDA the inputs are channels-last; a fold without stopping patients (``stop_fraction: 0``) has an empty
    image stack, which must not be reshaped."""
    from survival_model.training.loop import DeviceChoice

    train, _ = planted(40, 1)
    empty = SurvivalArrays((), np.zeros(0), np.zeros(0, dtype=bool), np.zeros((0,), dtype=np.float32),
                           np.zeros((0, 4), dtype=np.float32))
    choice = DeviceChoice(torch.device("cpu"), None, channels_last=True, pin_memory=False)
    network = global_net(**NET, variant="hybrid", tabular_hidden=[])  # type: ignore[arg-type]
    outcome = train_model(network, FIT.model_copy(update={"epochs": 2}), AugmentParams(rotation_degrees=0), train,
                          empty, sequence_channels=1, choice=choice)
    assert len(outcome.history) == 3 and np.isnan(outcome.history[0].stop_loss)


def test_every_epoch_and_chunk_draws_its_own_dropout() -> None:
    seeds = [derived_seed(derived_seed(20250515, epoch), chunk) for epoch in range(1, 61) for chunk in range(8)]
    assert len(set(seeds)) == len(seeds)  # seed * 1000 + epoch + chunk gave 60 x 8 draws only 67 seeds
    assert derived_seed(-3, 1) != derived_seed(3, 1) and derived_seed(5, 1) == derived_seed(5, 1)
