"""Training one network on one fold: exact full-batch losses, selection on the fold's own stopping patients.

A fold's training patients are split (``survival_model.training.splits``) into the patients the network
is fitted on (``train``) and the **stopping** patients (``stop``): every choice made while training (the
tabular term's penalty, the epoch kept) is made on the stopping patients, never on the fold's validation
patients, which the fold scores once, at the end, with the model that was kept.

Every step sees the whole training set (``full_batch_step``): the Cox partial likelihood is computed over
exact risk sets (a mini-batch of 16 gives risk sets of 16 patients, a different objective). Where the
images do not fit through the network at once, the forward pass runs in chunks of ``FitParams.chunk_size``
patients: a first pass without gradients gives every patient's output and the loss's gradient with respect
to each output, a second pass (same chunks, same random draws) back-propagates those gradients chunk by
chunk, so the parameters' gradient is exactly the full-batch one in bounded memory.

Additive fusion (``NetworkParams.fusion``, see ``survival_model.models.network``), in two phases:

1. the tabular term (linear by default) gets its L2 penalty by cross-validation inside the fold's training
   patients (``fit_tabular_term``: the cross-validated partial likelihood for a Cox term; each inner fit with
   its own tabular pipeline, so scaling, imputation and any supervised selection see only its patients) and
   is then fitted to convergence (L-BFGS) on the fitting patients only and frozen, so that the stopping
   patients judge every epoch, epoch 0 included, out of sample;
2. the image term is trained on top of the fixed tabular term (AdamW, warm-up + cosine schedule,
   augmentation), one full-batch step per epoch; epoch 0 is the tabular model alone (the image term starts
   at zero), and the epoch with the best ``monitor`` score on the stopping patients is kept (possibly 0:
   the images added nothing), with ``patience`` epochs without improvement ending training. The best of
   many epochs on a few stopping patients beats epoch 0 by chance alone (the winner's curse), so it is kept
   only when the cross-fitted gain of choosing an epoch (each half of the stopping patients scores the epoch
   the other half chose, against epoch 0) exceeds ``image_gain_se`` (default 0) of its bootstrap standard
   errors (:func:`image_gain`); otherwise epoch 0 is kept;
3. the tabular term is refitted with the same penalty on all the fold's training patients (fitting and
   stopping: the usual refit after selection, nothing chosen any more) under the kept image term.

``concat`` fusion and the ``image`` variant train every parameter together in phase 2.

Devices (``FitParams.device``/``precision``): on CUDA the model and inputs are channels-last and the
forward pass runs under bf16 autocast (fp32 weights and optimiser); on CPU in fp32. Seeds: the initial
weights, every augmentation draw and the dropout draws come from ``FitParams.seed``, and with
``deterministic`` torch's deterministic algorithms are used, so a CPU run is repeatable bit for bit with the same
number of threads (``FitParams.threads``; recorded in each fold's summary): sums split over another number of
threads round differently in the last bits.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader

from survival_model.config import AugmentParams, FitParams, NetworkParams
from survival_model.errors import ConfigError
from survival_model.metrics import harrell_c, resample_indices
from survival_model.models.losses import cox_loss, objective_loss, risk_score
from survival_model.models.network import HybridSurvivalNet, additive_tabular_term
from survival_model.training.arrays import SurvivalArrays
from survival_model.training.data import SurvivalDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceChoice:
    """Where and how a model trains."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    pin_memory: bool

    def describe(self) -> str:
        precision = "bf16 autocast" if self.amp_dtype == torch.bfloat16 else "fp32"
        return f"{self.device} ({precision})"


def choose_device(fit: FitParams, index: int | None = None) -> DeviceChoice:
    """The device of ``fit.device`` (``auto``: CUDA when present); CUDA device ``index`` if given."""
    cuda = torch.cuda.is_available()
    if fit.device == "cuda" and not cuda:
        raise ConfigError("training.fit.device: cuda, but torch sees no CUDA device (use auto or cpu)")
    if fit.device == "cpu" or not cuda:
        if fit.precision == "bf16":
            log.warning("training.fit.precision: bf16 is used on CUDA only; training on the CPU in fp32")
        return DeviceChoice(torch.device("cpu"), None, False, False)
    device = torch.device("cuda", index if index is not None else torch.cuda.current_device())
    bf16 = fit.precision == "bf16" or (fit.precision == "auto" and torch.cuda.is_bf16_supported())
    return DeviceChoice(device, torch.bfloat16 if bf16 else None, True, True)


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
    """One epoch of the image phase (one full-batch step); epoch 0 is the model before it. ``stop_*``: the
    loss and Harrell's C on the fold's stopping patients (NaN when there are none)."""

    epoch: int
    train_loss: float
    stop_loss: float
    stop_cindex: float
    learning_rate: float
    seconds: float
    data_seconds: float
    patients: int
    slices: int


@dataclass(frozen=True)
class ImageGain:
    """The image epochs against epoch 0 (the tabular term alone) on the stopping patients (:func:`image_gain`), in
    the monitor's score oriented so that a positive gain is better (lower loss, higher C)."""

    #: The best epoch on all the stopping patients and its gain over epoch 0 there (biased upwards: it chose).
    best_epoch: int
    gain: float
    #: The cross-fitted gain of choosing an epoch (each half's choice scored on the other half) and its SE.
    honest_gain: float
    standard_error: float
    #: The best epoch was kept: the honest gain exceeded ``FitParams.image_gain_se`` standard errors.
    kept: bool


@dataclass
class TrainOutcome:
    """The kept model, the curves that chose it and the choices made on the stopping patients."""

    model: HybridSurvivalNet
    history: list[EpochRecord]
    best_epoch: int
    best_score: float
    stopped_early: bool
    centre: float
    device: str
    #: The tabular term's L2 penalty kept (None without a separately fitted tabular term).
    tabular_penalty: float | None = None
    #: Each penalty tried and its loss on the stopping patients.
    penalties: dict[str, float] = field(default_factory=dict)
    #: Additive fusion: the best image epoch's gain over epoch 0 and whether it was kept (None otherwise).
    image_gain: ImageGain | None = None

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
    if "images" in out and choice.channels_last and out["images"].ndim > 2 and len(out["images"]):
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


def _schedule(optimizer: torch.optim.Optimizer, fit: FitParams) -> torch.optim.lr_scheduler.LRScheduler:
    """Per step (= per epoch: every step is full-batch): linear warm-up, then cosine decay or constant."""
    warmup, total = fit.warmup_epochs, fit.epochs
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
#: Given which of a fold's training patients (its fitting, then its stopping patients) an inner fit sees, the
#: tabular matrices of those patients and of all of them from a tabular pipeline fitted on those alone.
InnerTabular = Callable[[npt.NDArray[np.bool_]], tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]


@dataclass(frozen=True)
class Batch:
    """A whole set of patients as tensors on the training device (``images``/``tabular`` None when absent)."""

    images: torch.Tensor | None
    tabular: torch.Tensor | None
    time: torch.Tensor
    event: torch.Tensor

    def __len__(self) -> int:
        return int(self.time.shape[0])


def as_batch(arrays: SurvivalArrays, choice: DeviceChoice, images: torch.Tensor | None = None) -> Batch:
    """``arrays`` on ``choice``'s device; ``images`` replaces the stored images (e.g. augmented ones)."""
    if images is None and arrays.images is not None:
        images = torch.from_numpy(np.ascontiguousarray(arrays.images, dtype=np.float32))
    tabular = torch.from_numpy(np.ascontiguousarray(arrays.tabular, dtype=np.float32)) \
        if arrays.tabular is not None else None
    moved = _batch_to({k: v for k, v in {"images": images, "tabular": tabular}.items() if v is not None}, choice)
    return Batch(moved.get("images"), moved.get("tabular"),
                 torch.from_numpy(arrays.time_days.astype(np.float32)).to(choice.device),
                 torch.from_numpy(arrays.event.astype(bool)).to(choice.device))


def derived_seed(*parts: int) -> int:
    """A seed for one draw from the integers ``parts`` (e.g. the run's seed, the epoch, the chunk): distinct
    parts give unrelated seeds (numpy's ``SeedSequence``), where ``seed * 1000 + epoch + chunk`` made epoch 1's
    second chunk reuse epoch 2's first chunk's dropout draws."""
    return int(np.random.SeedSequence([p & (2**64 - 1) for p in parts]).generate_state(1)[0])  # negatives too


def _seeded(forward: Callable[[slice], torch.Tensor], chunk: slice, seed: int) -> torch.Tensor:
    """``forward(chunk)`` with the random draws (dropout) fixed by ``seed``: the two passes of a chunked step
    see the same network."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return forward(chunk)


def full_batch_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    forward: Callable[[slice], torch.Tensor], loss_fn: Callable[[torch.Tensor], torch.Tensor],
                    n: int, chunk_size: int, seed: int) -> float:
    """One optimiser step on the loss of all ``n`` patients' outputs (``forward(rows)`` gives the outputs of a
    slice of patients). With more than ``chunk_size`` patients the forward pass runs in chunks twice: without
    gradients for the outputs and the loss's gradient with respect to them, then with gradients,
    back-propagating those output gradients chunk by chunk (same chunks and random draws; running
    statistics restored after the first pass): the parameters' gradient is the full-batch one, exactly."""
    optimizer.zero_grad(set_to_none=True)
    if n <= chunk_size:
        loss = loss_fn(forward(slice(0, n)))
        loss.backward()  # type: ignore[no-untyped-call]
    else:
        # near-equal chunks (513 patients in chunks of 512: 257 + 256, not 512 + 1): a batch norm over patients
        # (the standardised image term) needs more than one per chunk
        bounds = np.linspace(0, n, -(-n // chunk_size) + 1).round().astype(int)
        chunks = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
        with torch.no_grad():
            outputs = torch.cat([_seeded(forward, c, derived_seed(seed, j)) for j, c in enumerate(chunks)])
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])
        leaf = outputs.detach().requires_grad_(True)
        loss = loss_fn(leaf)
        loss.backward()  # type: ignore[no-untyped-call]
        gradient = leaf.grad
        if gradient is None:  # pragma: no cover - the loss depends on the outputs
            raise RuntimeError("the loss has no gradient with respect to the outputs")
        for j, c in enumerate(chunks):
            _seeded(forward, c, derived_seed(seed, j)).backward(gradient[c])  # type: ignore[no-untyped-call]
    optimizer.step()
    return float(loss.detach())


def _loss(network: NetworkParams, fit: FitParams, centre: float, output: torch.Tensor, batch: Batch) -> torch.Tensor:
    return objective_loss(network.objective, output, batch.time, batch.event, centre=centre, censored=fit.censored,
                          ties=fit.ties)


def inner_folds(time: npt.NDArray[np.float64], event: npt.NDArray[np.bool_], x: npt.NDArray[np.float32],
                folds: int) -> npt.NDArray[np.int64]:
    """An inner fold per patient: patients ordered by survival time (then event and their tabular values: no
    identifier, so no key, decides the order) and dealt out in turn, so every inner fold spans the times."""
    order = np.lexsort((*x.T[::-1], event, time))
    assigned = np.empty(len(time), dtype=np.int64)
    assigned[order] = np.arange(len(time)) % folds
    return assigned


def _fit_linear(tabular: torch.nn.Module, network: NetworkParams, fit: FitParams, centre: float, x: torch.Tensor,
                time: torch.Tensor, event: torch.Tensor, penalty: float, initial: dict[str, torch.Tensor],
                offset: torch.Tensor | None = None) -> None:
    """The tabular term ``tabular`` (the network's, or an inner fit's copy) fitted to convergence (L-BFGS, full
    batch) from ``initial`` with an L2 penalty on its weights; ``offset`` (e.g. the image term's output) is
    added to its output as a fixed term."""
    tabular.load_state_dict(initial)
    weights = [p for name, p in tabular.named_parameters() if name.endswith("weight")]
    optimizer = torch.optim.LBFGS(list(tabular.parameters()), lr=1.0, max_iter=fit.tabular_iterations,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        output = tabular(x)
        if offset is not None:
            output = output + offset
        loss = objective_loss(network.objective, output, time, event, centre=centre, censored=fit.censored,
                              ties=fit.ties)
        loss = loss + penalty * sum((w**2).sum() for w in weights)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]


def _total_loss(tabular: torch.nn.Module, network: NetworkParams, fit: FitParams, centre: float, x: torch.Tensor,
                time: torch.Tensor, event: torch.Tensor) -> float:
    """The unpenalised loss summed over patients (Cox: the negative log partial likelihood over these patients'
    own risk sets)."""
    with torch.no_grad():
        out = tabular(x)
        if network.objective == "cox":
            return float(cox_loss(out[:, 0], time, event, fit.ties, reduction="sum"))
        return float(objective_loss(network.objective, out, time, event, centre=centre, censored=fit.censored,
                                    ties=fit.ties)) * len(time)


def fit_tabular_term(model: HybridSurvivalNet, network: NetworkParams, fit: FitParams, centre: float, train: Batch,
                     stop: Batch, inner_tabular: InnerTabular | None = None) -> tuple[float, dict[str, float]]:
    """Phase 1 of the additive fusion: the tabular term's L2 penalty (on its weights, not the biases) is chosen by
    cross-validation inside the fold's training patients (``train`` and ``stop``; ``fit.tabular_cv_folds``
    inner folds, :func:`inner_folds`), and the term is then fitted to convergence on all of them with that
    penalty and frozen. For a Cox term the criterion is the cross-validated partial likelihood of Verweij and van
    Houwelingen (Stat Med 1993): each inner fold contributes l(b_-k) - l_-k(b_-k), the log partial likelihood
    of all patients minus that of the patients the fit saw, which stays stable with few deaths per inner fold;
    for the other objectives, the held-out loss. Ties: the larger penalty. The term is then fitted on ``train``
    alone (the stopping patients judge the image epochs out of sample; :func:`refit_tabular_term` refits it on
    all of them afterwards). ``inner_tabular``: each inner fit's tabular matrices from a pipeline (scaling,
    imputation) fitted on that inner fit's patients alone, as the penalty's choice is scored; without it, the
    fold's matrices. Returns the penalty kept and every penalty's criterion (lower is better)."""
    tabular = model.tabular
    if tabular is None or train.tabular is None or (len(stop) and stop.tabular is None):
        raise ConfigError("the tabular term needs the tabular vector")
    x = torch.cat([train.tabular, stop.tabular]) if len(stop) and stop.tabular is not None else train.tabular
    time, event = torch.cat([train.time, stop.time]), torch.cat([train.event, stop.event])
    initial = copy.deepcopy(tabular.state_dict())
    model.eval()  # a deterministic objective for L-BFGS (dropout off; the L2 penalty regularises)
    assigned = inner_folds(time.cpu().numpy().astype(float), event.cpu().numpy().astype(bool),
                           x.detach().cpu().numpy(), min(fit.tabular_cv_folds, len(time)))
    # per inner fold: the patients it fits on, their matrix, every patient's matrix, a term and its start
    inner: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.nn.Module, dict[str, torch.Tensor]]] = []
    for k in np.unique(assigned):
        kept = torch.from_numpy(assigned != k).to(x.device)
        if inner_tabular is None:
            inner.append((kept, x[kept], x, tabular, initial))
            continue
        fitted, every = inner_tabular(assigned != k)  # the pipeline's width can differ (categories, indicators)
        with torch.random.fork_rng(devices=[]):  # its own initial weights; the training's draws stay as they were
            torch.manual_seed(derived_seed(fit.seed, int(k)))
            term = additive_tabular_term(network, fitted.shape[1], model.output_size).to(x.device).eval()
        inner.append((kept, torch.from_numpy(fitted).to(x.device), torch.from_numpy(every).to(x.device), term,
                      copy.deepcopy(term.state_dict())))
    tried: dict[str, float] = {}
    for penalty in fit.tabular_penalties:
        total = 0.0
        for kept, x_kept, x_all, fold_term, start in inner:
            held = ~kept
            _fit_linear(fold_term, network, fit, centre, x_kept, time[kept], event[kept], penalty, start)
            if network.objective == "cox":
                total += _total_loss(fold_term, network, fit, centre, x_all, time, event) - \
                    _total_loss(fold_term, network, fit, centre, x_kept, time[kept], event[kept])
            else:
                total += _total_loss(fold_term, network, fit, centre, x_all[held], time[held], event[held])
        tried[f"{penalty:g}"] = total
    finite = {p: tried[f"{p:g}"] for p in fit.tabular_penalties if math.isfinite(tried[f"{p:g}"])}
    chosen = min(finite, key=lambda p: (finite[p], -p)) if finite else max(fit.tabular_penalties)
    assert train.tabular is not None  # checked above
    _fit_linear(tabular, network, fit, centre, train.tabular, train.time, train.event, chosen, initial)
    for parameter in tabular.parameters():
        parameter.requires_grad_(False)
    return chosen, tried


def refit_tabular_term(model: HybridSurvivalNet, network: NetworkParams, fit: FitParams, centre: float,
                       train: Batch, stop: Batch, penalty: float) -> None:
    """Phase 3 of the additive fusion: the tabular term refitted with ``penalty`` on the fitting and stopping
    patients together, under the kept image term (its output is the fixed offset of the fit), and frozen."""
    tabular = model.tabular
    if tabular is None or not len(stop) or train.tabular is None or stop.tabular is None:
        return
    x = torch.cat([train.tabular, stop.tabular])
    time, event = torch.cat([train.time, stop.time]), torch.cat([train.event, stop.event])
    image_term = None
    if model.backbone is not None and train.images is not None and stop.images is not None:
        model.eval()
        with torch.no_grad():
            image_term = torch.cat([_image_term(model, train.images, fit.chunk_size),
                                    _image_term(model, stop.images, fit.chunk_size)])
    for parameter in tabular.parameters():
        parameter.requires_grad_(True)
    _fit_linear(tabular, network, fit, centre, x, time, event, penalty, copy.deepcopy(tabular.state_dict()),
                offset=image_term)
    for parameter in tabular.parameters():
        parameter.requires_grad_(False)


def _image_term(model: HybridSurvivalNet, images: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The image term's output for ``images`` (eval mode, in chunks): what the combined output adds to the
    tabular term's."""
    parts = [model.image_term(model.embed_images(images[i:i + chunk_size])).float()
             for i in range(0, len(images), chunk_size)]
    return torch.cat(parts)


def train_model(network: NetworkParams, fit: FitParams, augment: AugmentParams, train: SurvivalArrays,
                stop: SurvivalArrays, *, sequence_channels: int, choice: DeviceChoice | None = None,
                progress: ProgressFn | None = None, inner_tabular: InnerTabular | None = None) -> TrainOutcome:
    """Train a fresh network on ``train``; every choice on ``stop`` (see the module docstring;
    ``inner_tabular``: :func:`fit_tabular_term`)."""
    choice = choice or choose_device(fit)
    if len(train) < 2 or not bool(train.event.any()):
        raise ConfigError(f"a fold needs at least 2 training patients and one death (got {len(train)} patients, "
                          f"{int(train.event.sum())} deaths)")
    in_chans = int(train.images.shape[2]) if train.images is not None else 0
    n_tabular = int(train.tabular.shape[1]) if train.tabular is not None else 0
    centre = output_centre(network.objective, train.time_days)
    with torch_settings(fit.threads if choice.device.type == "cpu" else None, fit.deterministic):
        torch.manual_seed(fit.seed)
        model = HybridSurvivalNet(network, in_chans, n_tabular, in_chans - sequence_channels).to(choice.device)
        if choice.channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_batch, stop_batch = as_batch(train, choice), as_batch(stop, choice)
        penalty: float | None = None
        penalties: dict[str, float] = {}
        if model.fusion == "additive" and model.tabular is not None:
            penalty, penalties = fit_tabular_term(model, network, fit, centre, train_batch, stop_batch, inner_tabular)
        history, best_epoch, best, stopped, gain = _train_images(model, network, fit, augment, train, train_batch,
                                                                 stop, sequence_channels, centre, choice, progress)
        if penalty is not None:
            refit_tabular_term(model, network, fit, centre, train_batch, stop_batch, penalty)
        model.eval()
    return TrainOutcome(model, history, best_epoch, best, stopped, centre, choice.describe(), penalty, penalties,
                        gain)


def image_gain(network: NetworkParams, fit: FitParams, centre: float, stop: SurvivalArrays,
               outputs: Sequence[npt.NDArray[np.float32]], best_epoch: int) -> ImageGain:
    """The image epochs against epoch 0 on the stopping patients ``stop``, from their outputs at every epoch
    (``outputs[e]``), in the monitor's score (lower loss or higher C: positive is better).

    The best of many epochs on the same patients beats epoch 0 by chance alone (the winner's curse), so the
    gain that decides is **cross-fitted**: the stopping patients are split in two halves (deaths and survivors
    dealt out alternately in an order drawn from ``fit.seed``), each half's epoch is the best on the other half,
    and its gain over epoch 0 is scored on the half that did not choose it; the mean of the two halves' gains
    is the honest gain of choosing an epoch. Its standard error is the standard deviation of that mean over
    ``fit.image_gain_resamples`` bootstrap draws within each half (the epochs held fixed; draws where a score is
    undefined are left out; NaN with fewer than two defined draws). The best epoch (chosen on all the stopping
    patients) is kept when the honest gain exceeds ``fit.image_gain_se`` standard errors."""
    time, event = stop.time_days, stop.event

    def score(epoch: int, rows: npt.NDArray[np.int64]) -> float:
        out = torch.from_numpy(np.ascontiguousarray(outputs[epoch][rows]))
        if fit.monitor == "cindex":
            return harrell_c(risk_score(network.objective, out, centre).numpy(), time[rows], event[rows])
        with torch.no_grad():
            return -float(objective_loss(network.objective, out, torch.from_numpy(time[rows].astype(np.float32)),
                                         torch.from_numpy(event[rows]), centre=centre, censored=fit.censored,
                                         ties=fit.ties))

    def gain(epoch: int, rows: npt.NDArray[np.int64]) -> float:
        return 0.0 if epoch == 0 else score(epoch, rows) - score(0, rows)

    def chosen(rows: npt.NDArray[np.int64]) -> int:
        scores = np.array([score(e, rows) for e in range(len(outputs))])
        return int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0

    every = np.arange(len(stop), dtype=np.int64)
    rng = np.random.default_rng(derived_seed(fit.seed, len(stop)))
    order = np.concatenate([rng.permutation(every[event]), rng.permutation(every[~event])])
    halves = [np.sort(order[0::2]), np.sort(order[1::2])]
    epochs = [chosen(halves[1]), chosen(halves[0])]  # half 0 scores the epoch half 1 chose, and back
    honest = float(np.mean([gain(e, h) for e, h in zip(epochs, halves, strict=True)]))
    drawn = [h[resample_indices(len(h), fit.image_gain_resamples, derived_seed(fit.seed, i))] if len(h) else
             np.zeros((fit.image_gain_resamples, 0), dtype=np.int64) for i, h in enumerate(halves)]
    draws = np.array([np.mean([gain(epochs[i], drawn[i][b]) for i in range(2)])
                      for b in range(fit.image_gain_resamples)])
    finite = draws[np.isfinite(draws)]
    error = float(np.std(finite, ddof=1)) if len(finite) >= 2 else float("nan")
    return ImageGain(best_epoch, gain(best_epoch, every), honest, error,
                     bool(honest > fit.image_gain_se * error) and best_epoch > 0)  # NaN: not kept


def augmented_images(arrays: SurvivalArrays, augment: AugmentParams, sequence_channels: int, seed: int,
                     epoch: int) -> torch.Tensor:
    """Every patient's image input augmented for ``epoch`` (draws fixed by seed, epoch and patient)."""
    if arrays.images is None:
        raise ValueError("no images to augment")
    dataset = SurvivalDataset(arrays, augment, sequence_channels, seed)
    dataset.set_epoch(epoch)
    return torch.stack([dataset[i]["images"] for i in range(len(arrays))])


def _train_images(model: HybridSurvivalNet, network: NetworkParams, fit: FitParams, augment: AugmentParams,
                  train: SurvivalArrays, train_batch: Batch, stop: SurvivalArrays, sequence_channels: int,
                  centre: float, choice: DeviceChoice, progress: ProgressFn | None,
                  ) -> tuple[list[EpochRecord], int, float, bool, ImageGain | None]:
    """Phase 2: the image term (additive) or every parameter (concat, image variant), one full-batch step per
    epoch; the best epoch on the stopping patients is kept (epoch 0, the model before any step, only in the
    additive fusion, where it is the tabular model alone, and there only when the best epoch's gain over it is
    within ``fit.image_gain_se`` standard errors)."""
    k_slices = int(train.images.shape[1]) if train.images is not None else 0
    started = time.perf_counter()
    loss0 = _full_loss(model, network, fit, centre, train_batch)
    stop_outputs = predict_outputs(model, stop, choice)
    stop_loss, stop_c = _validate(network, fit, stop, stop_outputs, centre)
    history = [EpochRecord(0, loss0, stop_loss, stop_c, 0.0, time.perf_counter() - started, 0.0, len(train), 0)]
    if progress is not None:
        progress(history[0])
    additive = model.fusion == "additive"
    trainable = model.image_parameters() if additive else [p for p in model.parameters() if p.requires_grad]
    if model.backbone is None and additive:  # the tabular model alone: nothing more to train
        return history, 0, _score(history[0], fit), False, None
    fixed_tabular = None
    if additive and model.tabular is not None and train_batch.tabular is not None:
        with torch.no_grad():
            fixed_tabular = model.embed_tabular(train_batch.tabular)
    optimizer = torch.optim.AdamW(trainable, lr=fit.learning_rate, weight_decay=fit.weight_decay)
    scheduler = _schedule(optimizer, fit)
    initial_state = best_state = copy.deepcopy(model.state_dict())
    stop_history = [stop_outputs]  # the stopping patients' outputs at every epoch
    best_epoch, best = (0, _score(history[0], fit)) if additive else (0, float("nan"))
    stale, stopped = 0, False
    for epoch in range(1, fit.epochs + 1):
        began = time.perf_counter()
        images = None
        if train.images is not None:
            images = augmented_images(train, augment, sequence_channels, fit.seed, epoch)
        batch = as_batch(train, choice, images)
        data_seconds = time.perf_counter() - began

        def forward(rows: slice, batch: Batch = batch) -> torch.Tensor:
            images = batch.images[rows] if batch.images is not None else None
            if additive:  # the fixed tabular term plus the image term
                tabular = fixed_tabular[rows] if fixed_tabular is not None else None
                return _autocast(choice, lambda: model.combine(model.embed_images(images), tabular))  # type: ignore[arg-type]
            return _autocast(choice, lambda: model(images, batch.tabular[rows] if batch.tabular is not None else None))

        model.train()
        def loss_fn(out: torch.Tensor, batch: Batch = batch) -> torch.Tensor:
            return _loss(network, fit, centre, out, batch)

        train_loss = full_batch_step(model, optimizer, forward, loss_fn, len(batch), fit.chunk_size,
                                     derived_seed(fit.seed, epoch))
        scheduler.step()
        stop_outputs = predict_outputs(model, stop, choice)
        stop_history.append(stop_outputs)
        stop_loss, stop_c = _validate(network, fit, stop, stop_outputs, centre)
        record = EpochRecord(epoch, train_loss, stop_loss, stop_c, float(optimizer.param_groups[0]["lr"]),
                             time.perf_counter() - began, data_seconds, len(train), len(train) * k_slices)
        history.append(record)
        if progress is not None:
            progress(record)
        score = _score(record, fit)
        if len(stop) == 0:
            score = -record.train_loss if fit.monitor == "cindex" else record.train_loss
        if _improved(score, best, fit.monitor) or (best_epoch == 0 and not additive):
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if stale >= fit.patience and epoch >= fit.min_epochs:
            stopped = True
            break
    gain = None
    if additive and len(stop) and best_epoch > 0:
        gain = image_gain(network, fit, centre, stop, stop_history, best_epoch)
        if not gain.kept:
            best_epoch, best, best_state = 0, _score(history[0], fit), initial_state
        log.info("image epoch %d: gain over epoch 0 on the stopping patients %.4f, cross-fitted %.4f (SE %.4f): %s",
                 gain.best_epoch, gain.gain, gain.honest_gain, gain.standard_error,
                 "kept" if gain.kept else f"not above {fit.image_gain_se:g} SE, epoch 0 kept")
    model.load_state_dict(best_state)
    return history, best_epoch, best, stopped, gain


def _autocast(choice: DeviceChoice, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    with torch.autocast(choice.device.type, dtype=choice.amp_dtype or torch.float32,
                        enabled=choice.amp_dtype is not None):
        out = fn()
    return out.float()


def _score(record: EpochRecord, fit: FitParams) -> float:
    return record.stop_cindex if fit.monitor == "cindex" else record.stop_loss


def _full_loss(model: HybridSurvivalNet, network: NetworkParams, fit: FitParams, centre: float,
               batch: Batch) -> float:
    """The loss of the whole (unaugmented) training set in eval mode, in chunks."""
    model.eval()
    with torch.no_grad():
        outputs = []
        for i in range(0, len(batch), fit.chunk_size):
            rows = slice(i, i + fit.chunk_size)
            outputs.append(model(batch.images[rows] if batch.images is not None else None,
                                 batch.tabular[rows] if batch.tabular is not None else None).float())
        return float(_loss(network, fit, centre, torch.cat(outputs), batch))


def _validate(network: NetworkParams, fit: FitParams, validation: SurvivalArrays,
              outputs_array: npt.NDArray[np.float32], centre: float) -> tuple[float, float]:
    """The loss and Harrell's C of the network's outputs on ``validation``."""
    if len(validation) == 0:
        return float("nan"), float("nan")
    outputs = torch.from_numpy(outputs_array)
    time_days = torch.from_numpy(validation.time_days.astype(np.float32))
    event = torch.from_numpy(validation.event)
    with torch.no_grad():
        loss = float(objective_loss(network.objective, outputs, time_days, event, centre=centre,
                                    censored=fit.censored, ties=fit.ties))
    risk = risk_score(network.objective, outputs, centre).numpy()
    return loss, harrell_c(risk, validation.time_days, validation.event)
