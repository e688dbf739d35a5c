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

``cox``: the negative Cox partial log-likelihood (Efron or Breslow ties, exact risk sets) of the network's
log-risk; ``tests/models/test_losses.py`` checks it against scikit-survival's Cox model.

``weibull``: the negative log-likelihood of a Weibull model with per-patient log scale and log shape
(torchsurv's accelerated-failure-time parameterisation). Time enters in units of ``centre`` (the
training rows' median days), so the network's outputs start near a sensible scale.

:func:`risk_score` turns any objective's output into one number per patient, higher = earlier death,
the convention of every C-index here.
"""

from __future__ import annotations

import math
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
    """Negative Cox partial log-likelihood of ``log_risk`` (mean over deaths, or the sum). Zero when no death.

    Every death's risk set is every patient whose time is at or after it, censored patients with the same time
    included; tied deaths share a denominator (Breslow) or have it thinned by their tied share (Efron).
    Written here because torchsurv's (0.1.x) shortcut for batches without tied deaths counts each risk set
    from the death's sorted position, so a patient censored on a death's day drops out of it whenever the
    (unstable) sort puts them first; ``tests/models/test_losses.py`` checks this against scikit-survival and a
    direct loop. Computed in float64 with the largest log-risk factored out (no overflow).
    """
    died = event.reshape(-1).to(torch.bool)
    if not bool(died.any()):
        return log_risk.sum() * 0.0  # no death in the batch: the likelihood has no term
    if ties not in ("efron", "breslow"):
        raise ValueError(f"ties must be efron or breslow, not {ties!r}")
    risk = log_risk.reshape(-1).to(torch.float64)
    time = time_days.reshape(-1).to(device=risk.device, dtype=torch.float64)
    died = died.to(risk.device)
    order = torch.argsort(time, stable=True)
    risk, time, died = risk[order], time[order], died[order]
    top = risk.detach().max()
    weight = torch.exp(risk - top)
    at_or_after = torch.flip(torch.cumsum(torch.flip(weight, [0]), 0), [0])  # sum over rows i.. of the sorted set
    death_time = time[died]
    unique_times, tied = torch.unique(death_time, return_counts=True)  # sorted
    group = torch.searchsorted(unique_times, death_time)  # each death's tie group
    risk_set = at_or_after[torch.searchsorted(time.contiguous(), unique_times)][group]  # from the first row at t
    if ties == "efron":
        tied_weight = torch.zeros_like(unique_times).scatter_add(0, group, weight[died])[group]
        first_death = torch.searchsorted(death_time.contiguous(), unique_times)[group]
        rank = torch.arange(len(death_time), device=risk.device) - first_death  # 0 .. m-1 within a tie group
        risk_set = risk_set - rank / tied[group] * tied_weight
    log_likelihood = risk[died] - (torch.log(risk_set) + top)
    total = -log_likelihood.sum()
    loss = total / len(death_time) if reduction == "mean" else total
    return loss.to(log_risk.dtype if log_risk.is_floating_point() else torch.float32)


def weibull_loss(log_params: torch.Tensor, time_days: torch.Tensor, event: torch.Tensor,
                 centre_days: float) -> torch.Tensor:
    """Negative Weibull log-likelihood (torchsurv) with time in units of ``centre_days``."""
    from torchsurv.loss.weibull import neg_log_likelihood_weibull  # torchsurv: ~2 s over torch, weibull objective only

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


def risk_score(objective: Objective, output: torch.Tensor, centre: float) -> torch.Tensor:
    """One risk per patient, higher = earlier death, on a scale that does not depend on the training rows: the
    log-risk (cox; ``centre`` unused, the network's ``output_offset`` centres it), minus the predicted log-days
    (mse: output + ``centre``), minus the log of the median survival in days (weibull: log scale + log
    ``centre`` + log(ln 2) / shape). ``centre`` is the one the network was trained with (its fold's), or the
    mean of the folds' for an ensemble's mean output."""
    if objective == "cox":
        return output[:, 0]
    if objective == "mse":
        return -(output[:, 0] + centre)
    if objective == "weibull":
        log_scale, log_shape = output[:, 0], output[:, 1]
        return -(log_scale + math.log(centre) + math.log(math.log(2.0)) * torch.exp(-log_shape))
    raise ValueError(f"unknown objective {objective!r}")


def ensemble_centre(objective: Objective, centres: list[float]) -> float:
    """The centre of the folds' mean output: the mean of the folds' centres (mse: they add to log-days), their
    geometric mean for weibull (its log scale is in units of the centre), so that ``risk_score`` of the mean
    output is the mean of the folds' risks' location terms."""
    if objective == "weibull":
        return float(math.exp(sum(math.log(c) for c in centres) / len(centres)))
    return float(sum(centres) / len(centres))


def predicted_days(objective: Objective, output: torch.Tensor, centre: float) -> torch.Tensor | None:
    """Predicted survival time in days where the objective gives one (mse: exp of log-days; weibull:
    the median), None for cox (a risk score has no time scale without a baseline hazard)."""
    if objective in ("mse", "weibull"):
        return torch.exp(-risk_score(objective, output, centre))
    return None
