"""Training objectives. ``mse``: the paper's regression of survival time, made censoring-aware.

The paper regresses survival time with a mean squared error. Here the target is **log-days**
(``log(time_days)``): survival times are right-skewed over two orders of magnitude, and on days a few
long survivors would dominate the loss. Censored patients are treated according to ``censored``:

- ``hinge`` (default): a censored patient's true time is at least the censoring time, so only a
  prediction *below* it is penalised (squared shortfall); a prediction above it costs nothing;
- ``drop``: censored patients are left out of the loss (the paper's implicit choice, wasteful and
  biased towards short survivors when censoring is heavy);
- ``naive``: the censoring time is treated as the death time (biased downwards; for comparison only).

The loss is the mean over the patients that contribute (all of them for ``hinge`` and ``naive``).
The network predicts log-days relative to ``centre`` (the training rows' mean log-days), so a fresh
network starts at the average survival instead of at 1 day.

``cox``: the negative Cox partial log-likelihood (torchsurv, Efron or Breslow ties) of the network's
log-risk; ``tests/models/test_losses.py`` checks it against scikit-survival's Cox model.

``weibull``: the negative log-likelihood of a Weibull model with per-patient log scale and log shape
(torchsurv's accelerated-failure-time parameterisation). Time enters in units of ``centre`` (the
training rows' median days), so the network's outputs start near a sensible scale.

:func:`risk_score` turns any objective's output into one number per patient, higher = earlier death,
the convention of every C-index here.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch

CensoredMode = Literal["hinge", "drop", "naive"]
Objective = Literal["cox", "mse", "weibull"]
Ties = Literal["efron", "breslow"]


def log_days(time_days: torch.Tensor) -> torch.Tensor:
    """The regression target: natural log of the survival time in days (times must be positive)."""
    if bool((time_days <= 0).any()):
        raise ValueError("survival times must be positive (days)")
    return torch.log(time_days)


def censored_mse(prediction: torch.Tensor, time_days: torch.Tensor, event: torch.Tensor,
                 censored: CensoredMode = "hinge") -> torch.Tensor:
    """Mean squared error on log-days with censored patients treated as ``censored`` says."""
    prediction = prediction.reshape(-1)
    target = log_days(time_days.reshape(-1).to(prediction.dtype))
    died = event.reshape(-1).to(torch.bool)
    error = prediction - target
    if censored == "naive":
        squared = error**2
    elif censored == "drop":
        if not bool(died.any()):
            return prediction.sum() * 0.0  # no death in the batch: no signal, but a graph to backprop
        squared = error[died] ** 2
    elif censored == "hinge":
        squared = torch.where(died, error**2, torch.clamp(error, max=0.0) ** 2)
    else:
        raise ValueError(f"censored must be hinge, drop or naive, not {censored!r}")
    return squared.mean()


def cox_loss(log_risk: torch.Tensor, time_days: torch.Tensor, event: torch.Tensor,
             ties: Ties = "efron", reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Negative Cox partial log-likelihood (mean over events, or their sum; torchsurv). Zero when no event."""
    from torchsurv.loss.cox import neg_partial_log_likelihood  # imports torchmetrics (~4 s): only when training

    died = event.reshape(-1).to(torch.bool)
    if not bool(died.any()):
        return log_risk.sum() * 0.0  # no death in the batch: the likelihood has no term
    with warnings.catch_warnings():  # torchsurv warns on every batch with tied times; ``ties`` handles them
        warnings.filterwarnings("ignore", message="Ties in `time` detected")
        loss: torch.Tensor = neg_partial_log_likelihood(log_risk.reshape(-1).float(), died,
                                                        time_days.reshape(-1).float(), ties_method=ties,
                                                        reduction=reduction)
    return loss


def weibull_loss(log_params: torch.Tensor, time_days: torch.Tensor, event: torch.Tensor,
                 centre_days: float) -> torch.Tensor:
    """Negative Weibull log-likelihood (torchsurv) with time in units of ``centre_days``."""
    from torchsurv.loss.weibull import neg_log_likelihood_weibull

    if log_params.ndim != 2 or log_params.shape[1] != 2:
        raise ValueError(f"weibull needs (batch, 2) outputs (log scale, log shape), got {tuple(log_params.shape)}")
    loss: torch.Tensor = neg_log_likelihood_weibull(log_params.float(), event.reshape(-1).to(torch.bool),
                                                    time_days.reshape(-1).float() / centre_days)
    return loss


def objective_loss(objective: Objective, output: torch.Tensor, time_days: torch.Tensor, event: torch.Tensor, *,
                   centre: float, censored: CensoredMode = "hinge", ties: Ties = "efron") -> torch.Tensor:
    """The training loss of ``objective`` for the network's ``output`` (see the module docstring)."""
    if objective == "cox":
        return cox_loss(output[:, 0], time_days, event, ties)
    if objective == "mse":
        return censored_mse(output[:, 0] + centre, time_days, event, censored)
    if objective == "weibull":
        return weibull_loss(output, time_days, event, centre)
    raise ValueError(f"unknown objective {objective!r}")


def risk_score(objective: Objective, output: torch.Tensor) -> torch.Tensor:
    """One risk per patient, higher = earlier death: the log-risk (cox), minus the predicted log-time
    (mse), minus the log median survival time (weibull: log scale + log(ln 2) / shape)."""
    if objective == "cox":
        return output[:, 0]
    if objective == "mse":
        return -output[:, 0]
    if objective == "weibull":
        log_scale, log_shape = output[:, 0], output[:, 1]
        return -(log_scale + math.log(math.log(2.0)) * torch.exp(-log_shape))
    raise ValueError(f"unknown objective {objective!r}")


def predicted_days(objective: Objective, output: torch.Tensor, centre: float) -> torch.Tensor | None:
    """Predicted survival time in days where the objective gives one (mse: exp of log-days; weibull:
    the median), None for cox (a risk score has no time scale without a baseline hazard)."""
    if objective == "mse":
        return torch.exp(output[:, 0] + centre)
    if objective == "weibull":
        return centre * torch.exp(-risk_score("weibull", output))
    return None
