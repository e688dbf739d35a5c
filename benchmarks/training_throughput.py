"""Training throughput per backbone on synthetic arrays shaped like the default inputs, in one run.

    .venv/bin/python benchmarks/training_throughput.py [--backbones a,b:48,c] [--slices 8] [--size 32]
        [--patients 74] [--validation 18] [--epochs 3] [--device auto|cpu|cuda] [--set key=value]

    on a CUDA machine, everything in one call:
    .venv/bin/python benchmarks/training_throughput.py --device cuda --size 224 --epochs 3

Each backbone (``name`` or ``name:patients`` to train it on fewer patients) trains a fresh hybrid network
with :func:`survival_model.training.loop.train_model` and the ``training`` settings of ``params.yaml``
(chunk size, optimiser, augmentation, deterministic, threads; ``fit.patience`` and ``min_epochs`` set so
that every epoch runs) on random arrays: ``(patients, K, C, S, S)`` images with C = the configured
sequences + mask channels, 38 tabular features (the default feature table's width), exponential survival
times, 70 % deaths; the defaults are one fold's fitting and stopping patients of the default cohort. An
epoch is one full-batch step (every training patient through the network, the loss over exact risk sets)
plus the pass over the stopping patients; the loop records its seconds, the time spent building the
epoch's augmented inputs and the patients and slices trained; reported are patients/s and slices/s (sum
over epochs / sum of seconds, the first epoch left out as warm-up when there are more), the data share
(augmentation / seconds), seconds per epoch, and the speed relative to the first
backbone at the same precision. On CUDA every backbone runs in bf16 autocast and in fp32 (channels-last
both) and the bf16/fp32 speed ratio is printed; on the CPU fp32 only. Nothing is written; no timing is
asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from survival_model.config import load_params, parse_override  # noqa: E402
from survival_model.training.data import SurvivalArrays  # noqa: E402
from survival_model.training.loop import choose_device, train_model  # noqa: E402

DEFAULT_BACKBONES = "mobilenetv3_small_050,resnet50,efficientnet_b0"
TABULAR = 38


def synthetic(n: int, slices: int, channels: int, size: int, seed: int) -> SurvivalArrays:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, slices, channels, size, size), dtype=np.float32)
    tabular = rng.standard_normal((n, TABULAR), dtype=np.float32)
    time_days = rng.exponential(400.0, n) + 1.0
    event = rng.random(n) < 0.7
    event[0] = True
    return SurvivalArrays(tuple(f"p{seed}-{i:04d}" for i in range(n)), time_days, event, images, tabular)


def measure(args: argparse.Namespace, overrides: dict[str, Any], backbone: str, patients: int,
            precision: str) -> dict[str, Any]:
    params = load_params(REPO / "params.yaml", {
        **overrides, "training.network.backbone": backbone, "training.network.variant": "hybrid",
        "training.fit.epochs": args.epochs, "training.fit.patience": 10_000, "training.fit.min_epochs": 1,
        "training.fit.device": args.device, "training.fit.precision": precision,
        "training.inputs.slices": args.slices, "training.inputs.size": args.size})
    tp = params.training
    channels = len(tp.inputs.sequences) + len(tp.inputs.mask_channels)
    train = synthetic(patients, args.slices, channels, args.size, 1)
    validation = synthetic(args.validation, args.slices, channels, args.size, 2)
    choice = choose_device(tp.fit)
    outcome = train_model(tp.network, tp.fit, tp.augment, train, validation,
                          sequence_channels=len(tp.inputs.sequences), choice=choice)
    history = outcome.history[1:] if len(outcome.history) > 1 else outcome.history
    seconds = sum(r.seconds for r in history)
    del outcome
    if choice.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"backbone": backbone, "patients": patients, "precision": "bf16" if choice.amp_dtype else "fp32",
            "device": choice.describe(), "chunk": tp.fit.chunk_size, "epochs": len(history),
            "epoch_s": seconds / len(history), "trained": history[-1].patients,
            "patients_s": sum(r.patients for r in history) / seconds,
            "slices_s": sum(r.slices for r in history) / seconds,
            "wait": sum(r.data_seconds for r in history) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=DEFAULT_BACKBONES,
                        help="comma-separated timm names, each optionally name:patients")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--patients", type=int, default=74, help="training patients (default: one fold's)")
    parser.add_argument("--validation", type=int, default=18, help="stopping patients scored every epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="another params override, e.g. training.fit.deterministic=false")
    args = parser.parse_args()
    overrides = dict(parse_override(o) for o in args.overrides)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    precisions = ("bf16", "fp32") if cuda else ("fp32",)
    plan = []
    for item in args.backbones.split(","):
        name, _, count = item.strip().partition(":")
        plan.append((name, int(count) if count else args.patients))

    load = os.getloadavg()[0]
    rows = [measure(args, overrides, name, count, precision) for name, count in plan for precision in precisions]

    base = load_params(REPO / "params.yaml", overrides).training
    device = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} " \
        f"torch threads, load average {load:.1f} at the start"
    reduced = [f"{n} on {c}" for n, c in plan if c != args.patients]
    print(f"Training throughput on random arrays: {args.patients} training + {args.validation} stopping "
          f"patients of {args.slices} slices x {len(base.inputs.sequences) + len(base.inputs.mask_channels)} "
          f"channels x {args.size}x{args.size} px, {TABULAR} tabular features, full batch (chunks of "
          f"{base.fit.chunk_size} patients), {args.epochs} epochs "
          f"({'first left out as warm-up' if args.epochs > 1 else 'no warm-up'}), "
          f"deterministic {base.fit.deterministic}; {device}; torch {torch.__version__}, Python "
          f"{platform.python_version()}." + (f" Fewer training patients: {', '.join(reduced)}." if reduced else ""))
    print()
    print("| backbone | precision | device | train patients | s / epoch | patients / s | slices / s | data share "
          "| speed vs first | bf16 / fp32 |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    first = {r["precision"]: r["patients_s"] for r in rows if r["backbone"] == plan[0][0]}
    for row in rows:
        ratio = "—"
        if row["precision"] == "bf16":
            fp32 = next(r for r in rows if r["backbone"] == row["backbone"] and r["precision"] == "fp32")
            ratio = f"{row['patients_s'] / fp32['patients_s']:.2f}"
        print(f"| {row['backbone']} | {row['precision']} | {row['device']} | {row['patients']} | "
              f"{row['epoch_s']:.2f} | {row['patients_s']:.1f} | {row['slices_s']:.0f} | {row['wait']:.1%} | "
              f"{row['patients_s'] / first[row['precision']]:.3f} | {ratio} |")
    print()
    print("s / epoch: one full-batch step plus the pass over the stopping patients. Patients / s: patients trained "
          "per epoch / s. Data share: building the epoch's augmented inputs and moving them to the device / epoch "
          "time.")
    print()
    print(f"Command: `{' '.join(['.venv/bin/python benchmarks/training_throughput.py', *sys.argv[1:]])}`")

if __name__ == "__main__":
    main()
