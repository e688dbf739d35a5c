"""Training one network on one fold: AdamW, warm-up + cosine schedule, early stopping, best weights.

Per epoch: the training patients in shuffled mini-batches (augmented), then the validation patients
(no augmentation) scored by the loss and Harrell's C-index; the weights of the best validation epoch
(``FitParams.monitor``) are kept, and training stops after ``patience`` epochs without improvement
(never before ``min_epochs``).

Devices (``FitParams.device``/``precision``): on CUDA the model and batches are channels-last, the
forward pass runs under bf16 autocast (fp32 weights and optimiser), batches come from pinned memory
through DataLoader workers; on CPU in fp32 with the loader in the training process (the cores train).
Seeds: the initial weights, the batch order and every augmentation draw come from ``FitParams.seed``,
and with ``deterministic`` torch's deterministic algorithms are used, so a CPU run is repeatable
bit for bit. The time spent waiting for batches is measured every epoch (``data_seconds``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader

from survival_model.config import AugmentParams, FitParams, NetworkParams
from survival_model.errors import ConfigError
from survival_model.evaluation.metrics import harrell_c
from survival_model.models.losses import objective_loss, risk_score
from survival_model.models.network import HybridSurvivalNet
from survival_model.training.data import SurvivalArrays, SurvivalDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceChoice:
    """Where and how a model trains."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    pin_memory: bool
    workers: int

    def describe(self) -> str:
        precision = "bf16 autocast" if self.amp_dtype == torch.bfloat16 else "fp32"
        return f"{self.device} ({precision}, {self.workers} loader workers)"


def choose_device(fit: FitParams, index: int | None = None) -> DeviceChoice:
    """The device of ``fit.device`` (``auto``: CUDA when present); CUDA device ``index`` if given."""
    cuda = torch.cuda.is_available()
    if fit.device == "cuda" and not cuda:
        raise ConfigError("training.fit.device: cuda, but torch sees no CUDA device (use auto or cpu)")
    if fit.device == "cpu" or not cuda:
        if fit.precision == "bf16":
            log.warning("training.fit.precision: bf16 is used on CUDA only; training on the CPU in fp32")
        return DeviceChoice(torch.device("cpu"), None, False, False, fit.workers or 0)
    device = torch.device("cuda", index if index is not None else torch.cuda.current_device())
    bf16 = fit.precision == "bf16" or (fit.precision == "auto" and torch.cuda.is_bf16_supported())
    workers = fit.workers if fit.workers is not None else 4
    return DeviceChoice(device, torch.bfloat16 if bf16 else None, True, True, workers)


@contextmanager
def torch_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Thread count and deterministic algorithms for one training, restored afterwards."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_benchmark = torch.backends.cudnn.benchmark
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = not deterministic
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic, warn_only=old_warn)
        torch.backends.cudnn.benchmark = old_benchmark


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's curves (``val_*`` NaN when there is no validation set)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_cindex: float
    learning_rate: float
    seconds: float
    data_seconds: float
    patients: int
    slices: int


@dataclass
class TrainOutcome:
    """The best epoch's weights and the curves that chose it."""

    model: HybridSurvivalNet
    history: list[EpochRecord]
    best_epoch: int
    best_score: float
    stopped_early: bool
    centre: float
    device: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_wait_share(self) -> float:
        total = sum(r.seconds for r in self.history)
        return sum(r.data_seconds for r in self.history) / total if total else float("nan")


def output_centre(objective: str, time_days: npt.NDArray[np.float64]) -> float:
    """The training rows' scale the network predicts around (mse: mean log-days; weibull: median days)."""
    if objective == "mse":
        return float(np.mean(np.log(time_days)))
    if objective == "weibull":
        return float(np.median(time_days))
    return 0.0


def _batch_to(batch: dict[str, torch.Tensor], choice: DeviceChoice) -> dict[str, torch.Tensor]:
    out = {k: v.to(choice.device, non_blocking=choice.pin_memory) for k, v in batch.items()}
    if "images" in out and choice.channels_last:
        b, k = out["images"].shape[:2]
        flat = out["images"].flatten(0, 1).contiguous(memory_format=torch.channels_last)
        out["images"] = flat.view(b, k, *flat.shape[1:])
    return out


def _forward(model: HybridSurvivalNet, batch: dict[str, torch.Tensor], choice: DeviceChoice) -> torch.Tensor:
    with torch.autocast(choice.device.type, dtype=choice.amp_dtype or torch.float32,
                        enabled=choice.amp_dtype is not None):
        out: torch.Tensor = model(batch.get("images"), batch.get("tabular"))
    return out.float()


def predict_outputs(model: HybridSurvivalNet, arrays: SurvivalArrays, choice: DeviceChoice,
                    batch_size: int = 32) -> npt.NDArray[np.float32]:
    """The network's raw outputs ``(N, outputs)`` for ``arrays`` (eval mode, no augmentation)."""
    if len(arrays) == 0:
        return np.zeros((0, model.output_size), dtype=np.float32)
    loader = DataLoader(SurvivalDataset(arrays), batch_size=batch_size, shuffle=False, num_workers=0)
    model.eval()
    outputs = []
    with torch.no_grad():
        for batch in loader:
            outputs.append(_forward(model, _batch_to(batch, choice), choice).cpu())
    return torch.cat(outputs).numpy().astype(np.float32)


def _schedule(optimizer: torch.optim.Optimizer, fit: FitParams,
              steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    warmup = fit.warmup_epochs * steps_per_epoch
    total = fit.epochs * steps_per_epoch
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
    if warmup:
        schedulers.append(torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup))
    if fit.schedule == "cosine":
        schedulers.append(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup)))
    else:
        schedulers.append(torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0))
    if len(schedulers) == 1:
        return schedulers[0]
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones=[warmup])


def _improved(score: float, best: float, monitor: str) -> bool:
    if math.isnan(score):
        return False
    return math.isnan(best) or (score > best if monitor == "cindex" else score < best)


ProgressFn = Callable[[EpochRecord], None]


def train_model(network: NetworkParams, fit: FitParams, augment: AugmentParams, train: SurvivalArrays,
                validation: SurvivalArrays, *, sequence_channels: int, choice: DeviceChoice | None = None,
                progress: ProgressFn | None = None) -> TrainOutcome:
    """Train a fresh network on ``train``, early-stopped on ``validation`` (see the module docstring)."""
    choice = choice or choose_device(fit)
    if len(train) < 2 or not bool(train.event.any()):
        raise ConfigError(f"a fold needs at least 2 training patients and one death (got {len(train)} patients, "
                          f"{int(train.event.sum())} deaths)")
    in_chans = int(train.images.shape[2]) if train.images is not None else 0
    n_tabular = int(train.tabular.shape[1]) if train.tabular is not None else 0
    centre = output_centre(network.objective, train.time_days)
    with torch_settings(fit.threads if choice.device.type == "cpu" else None, fit.deterministic):
        torch.manual_seed(fit.seed)
        model = HybridSurvivalNet(network, in_chans, n_tabular).to(choice.device)
        if choice.channels_last:
            model = model.to(memory_format=torch.channels_last)
        dataset = SurvivalDataset(train, augment, sequence_channels, fit.seed)
        batch_size = min(fit.batch_size, len(train))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(train) > batch_size,
                            num_workers=choice.workers, pin_memory=choice.pin_memory,
                            persistent_workers=choice.workers > 0,
                            generator=torch.Generator().manual_seed(fit.seed))
        optimizer = torch.optim.AdamW(model.parameters(), lr=fit.learning_rate, weight_decay=fit.weight_decay)
        scheduler = _schedule(optimizer, fit, len(loader))
        history: list[EpochRecord] = []
        best_state, best_epoch, best = copy.deepcopy(model.state_dict()), 0, float("nan")
        stale, stopped = 0, False
        k_slices = int(train.images.shape[1]) if train.images is not None else 0
        for epoch in range(1, fit.epochs + 1):
            dataset.set_epoch(epoch)
            model.train()
            started, waiting, losses, seen = time.perf_counter(), 0.0, [], 0
            fetch = time.perf_counter()
            for batch in loader:
                batch = _batch_to(batch, choice)
                waiting += time.perf_counter() - fetch
                output = _forward(model, batch, choice)
                loss = objective_loss(network.objective, output, batch["time"], batch["event"], centre=centre,
                                      censored=fit.censored, ties=fit.ties)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                seen += len(batch["time"])
                fetch = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            val_loss, val_c = _validate(model, network, fit, validation, choice, centre)
            record = EpochRecord(epoch, float(np.mean(losses)), val_loss, val_c, lr, time.perf_counter() - started,
                                 waiting, seen, seen * k_slices)
            history.append(record)
            if progress is not None:
                progress(record)
            score = val_c if fit.monitor == "cindex" else val_loss
            if len(validation) == 0:
                score = -record.train_loss if fit.monitor == "cindex" else record.train_loss
            if _improved(score, best, fit.monitor) or best_epoch == 0:
                best, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            if stale >= fit.patience and epoch >= fit.min_epochs:
                stopped = True
                break
        model.load_state_dict(best_state)
        model.eval()
    return TrainOutcome(model, history, best_epoch, best, stopped, centre, choice.describe())


def _validate(model: HybridSurvivalNet, network: NetworkParams, fit: FitParams, validation: SurvivalArrays,
              choice: DeviceChoice, centre: float) -> tuple[float, float]:
    if len(validation) == 0:
        return float("nan"), float("nan")
    outputs = torch.from_numpy(predict_outputs(model, validation, choice))
    time_days = torch.from_numpy(validation.time_days.astype(np.float32))
    event = torch.from_numpy(validation.event)
    with torch.no_grad():
        loss = float(objective_loss(network.objective, outputs, time_days, event, centre=centre,
                                    censored=fit.censored, ties=fit.ties))
    risk = risk_score(network.objective, outputs).numpy()
    return loss, harrell_c(risk, validation.time_days, validation.event)
