"""The censoring-aware MSE objective on log-days."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from survival_model.models.losses import censored_mse, cox_loss, log_days, predicted_days, risk_score, weibull_loss


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


# --- Cox and Weibull (torchsurv) against references ------------------------------------------------

def _cohort(n: int = 200, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    hazard = np.exp(x @ np.array([0.8, -0.5, 0.0]))
    event_time = rng.exponential(1 / hazard) * 365
    censor = rng.uniform(50, 900, n)
    time = np.minimum(event_time, censor).round()  # whole days: tied times, as in real registries
    return x, np.maximum(time, 1.0), event_time <= censor


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_a_linear_model_fitted_with_the_cox_loss_matches_scikit_survival(ties: str) -> None:
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = _cohort()
    reference = CoxPHSurvivalAnalysis(ties=ties).fit(x, Surv.from_arrays(event, time)).coef_
    beta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    xt, tt, et = torch.from_numpy(x), torch.from_numpy(time), torch.from_numpy(event)
    optimiser = torch.optim.LBFGS([beta], max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = cox_loss((xt @ beta).double(), tt, et, ties)  # type: ignore[arg-type]
        loss.backward()
        return loss

    optimiser.step(closure)
    np.testing.assert_allclose(beta.detach().numpy(), reference, atol=2e-3)


def test_the_weibull_loss_is_the_negative_mean_log_likelihood_of_scipys_weibull() -> None:
    from scipy.stats import weibull_min

    _, time, event = _cohort(50)
    rng = np.random.default_rng(0)
    params = np.column_stack([rng.normal(0.0, 0.3, 50), rng.normal(0.2, 0.2, 50)])  # log scale, log shape
    centre = 200.0
    scale, shape = np.exp(params[:, 0]), np.exp(params[:, 1])
    t = time / centre
    log_lik = np.where(event, weibull_min.logpdf(t, shape, scale=scale), weibull_min.logsf(t, shape, scale=scale))
    loss = weibull_loss(torch.from_numpy(params), torch.from_numpy(time), torch.from_numpy(event), centre)
    # deaths contribute the log density, censored patients the log survival, time in units of ``centre``
    assert loss.item() == pytest.approx(-log_lik.mean(), rel=1e-4)


def _direct_cox(risk: list[float], time: list[float], event: list[int], ties: str) -> float:
    """The negative mean log partial likelihood, one death at a time, straight from its definition."""
    total, deaths = 0.0, 0
    for t in sorted({t for t, e in zip(time, event, strict=True) if e}):
        tied = [i for i in range(len(time)) if time[i] == t and event[i]]
        at_risk = sum(math.exp(risk[j]) for j in range(len(time)) if time[j] >= t)
        tied_sum = sum(math.exp(risk[i]) for i in tied)
        for rank, i in enumerate(tied):
            denominator = at_risk - (rank / len(tied) * tied_sum if ties == "efron" else 0.0)
            total += risk[i] - math.log(denominator)
            deaths += 1
    return -total / deaths


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("order", [[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_a_patient_censored_on_a_deaths_day_is_in_its_risk_set_whatever_the_row_order(ties: str,
                                                                                      order: list[int]) -> None:
    """No tied deaths, a censoring on a death's day: the case torchsurv's shortcut got wrong for one row order
    (a summed 2.2295 with the censored patient first instead of 2.5064)."""
    risk, time, event = [0.5, -0.3, 1.2, 0.1], [5.0, 5.0, 7.0, 9.0], [0, 1, 1, 0]
    expected = _direct_cox(risk, time, event, ties)
    assert expected * 2 == pytest.approx(2.5064, abs=1e-4)  # two deaths: the mean is half the sum
    loss = cox_loss(torch.tensor([risk[i] for i in order]), torch.tensor([time[i] for i in order]),
                    torch.tensor([event[i] for i in order]), ties)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_tied_deaths_and_censorings_match_the_definition(ties: str) -> None:
    rng = np.random.default_rng(7)
    time = rng.integers(1, 8, 40).astype(float).tolist()  # many ties of every kind
    event = rng.integers(0, 2, 40).tolist()
    risk = rng.normal(0, 1, 40).tolist()
    loss = cox_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event), ties)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(_direct_cox(risk, time, event, ties), rel=1e-5)
    summed = cox_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event), ties, reduction="sum")  # type: ignore[arg-type]
    assert summed.item() == pytest.approx(_direct_cox(risk, time, event, ties) * sum(event), rel=1e-5)


def test_large_log_risks_do_not_overflow() -> None:
    loss = cox_loss(torch.tensor([800.0, 799.0, 10.0]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0]))
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(_direct_cox([0.0, -1.0, -790.0], [1.0, 2.0, 3.0], [1, 1, 0], "efron"))


def test_an_all_censored_batch_gives_a_zero_cox_loss_with_a_graph() -> None:
    risk = torch.zeros(4, requires_grad=True)
    loss = cox_loss(risk, torch.tensor([5.0, 6.0, 7.0, 8.0]), torch.zeros(4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and risk.grad is not None


def test_risk_scores_point_the_same_way_for_every_objective() -> None:
    """Higher risk = earlier death: a longer predicted time (mse) or a larger Weibull median is lower risk."""
    longer = torch.tensor([[6.0], [5.0]])
    assert risk_score("mse", longer, 5.0)[0] < risk_score("mse", longer, 5.0)[1]
    weibull = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # same shape, larger scale first
    assert risk_score("weibull", weibull, 100.0)[0] < risk_score("weibull", weibull, 100.0)[1]
    days = predicted_days("weibull", weibull, 100.0)
    assert days is not None
    assert days[1].item() == pytest.approx(100.0 * math.log(2.0))  # median of Weibull(scale 1, shape 1) x 100
    assert predicted_days("cox", weibull[:, :1], 0.0) is None
    assert torch.equal(risk_score("cox", longer, 0.0), longer[:, 0])


@pytest.mark.parametrize("objective", ["mse", "weibull"])
def test_risks_do_not_depend_on_the_folds_centre(objective: str) -> None:
    """Two folds trained around different centres predict the same survival: their risks are equal, so the
    out-of-fold risks pool on one scale (a fold's centre is its training rows' mean log-days or median days)."""
    absolute = torch.tensor([[math.log(300.0), 0.2], [math.log(90.0), -0.1]])  # log-days (mse) / log scale in days
    risks = []
    for centre in (150.0, 240.0):
        shift = centre if objective == "mse" else math.log(centre)
        output = absolute - torch.tensor([shift, 0.0])  # what a network trained around ``centre`` outputs
        risks.append(risk_score(objective, output if objective == "weibull" else output[:, :1], centre))  # type: ignore[arg-type]
    torch.testing.assert_close(risks[0], risks[1])
    with pytest.raises(ValueError, match="weibull needs"):
        weibull_loss(torch.zeros(3, 1), torch.ones(3), torch.ones(3), 1.0)
