"""The censoring-aware MSE objective on log-days."""

from __future__ import annotations

import math

import pytest
import torch

from survival_model.models.losses import censored_mse, log_days


def test_deaths_cost_their_squared_log_error_and_censored_patients_only_a_shortfall() -> None:
    time = torch.tensor([100.0, 100.0, 100.0])
    event = torch.tensor([1, 0, 0])
    target = math.log(100.0)
    prediction = torch.tensor([target + 0.5, target + 2.0, target - 1.0])  # death off by 0.5; censored above; below
    assert censored_mse(prediction, time, event, "hinge").item() == pytest.approx((0.25 + 0.0 + 1.0) / 3)
    assert censored_mse(prediction, time, event, "drop").item() == pytest.approx(0.25)
    assert censored_mse(prediction, time, event, "naive").item() == pytest.approx((0.25 + 4.0 + 1.0) / 3)


def test_the_loss_has_gradients_and_an_all_censored_batch_under_drop_gives_zero() -> None:
    prediction = torch.zeros(4, 1, requires_grad=True)
    loss = censored_mse(prediction, torch.full((4,), 30.0), torch.zeros(4), "drop")
    loss.backward()
    assert loss.item() == 0.0 and prediction.grad is not None
    prediction = torch.zeros(4, 1, requires_grad=True)
    censored_mse(prediction, torch.full((4,), 30.0), torch.tensor([1, 0, 1, 0]), "hinge").backward()
    assert prediction.grad is not None and bool((prediction.grad < 0).all())  # every patient pushes upwards


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        log_days(torch.tensor([10.0, 0.0]))
    with pytest.raises(ValueError, match="censored must be hinge, drop or naive"):
        censored_mse(torch.zeros(2), torch.ones(2), torch.ones(2), "ignore")  # type: ignore[arg-type]
