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
Cox partial likelihood and the Weibull likelihood come from torchsurv (added with the training loop).
"""

from __future__ import annotations

from typing import Literal

import torch

CensoredMode = Literal["hinge", "drop", "naive"]


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
