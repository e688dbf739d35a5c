"""The promotion gate's error rate: how often it promotes a challenger that is truly worse, and how often
one that is truly better, on cohorts drawn from the repository's own survival generator.

    .venv/bin/python benchmarks/gate.py [--replications 1000] [--seed 0] [--workers 2] [--population 20000]
        [--no-write]

Cohorts: patients from ``survival_model/synthetic/survival.py`` (``sample_clinical``; an ``ImagingTruth``
with plausible random values, no image rendered; ``linear_predictor`` with ``synthetic.image_effect`` of
params.yaml; ``draw_event_time``; ``censor`` to the pipeline's 28 %; ``observed`` in whole days). Sizes: the
default cohort (``synthetic.patients``, 148) with its locked test fraction (``training.splits.test_fraction``,
0.2: 30 test patients, 118 development), and four times that (592: 118 test, 474 development). Each
replication draws a fresh cohort and a fresh random test set.

Models: the champion's risk is the true linear predictor plus Gaussian noise of SD ``s0``; a challenger's
is the true linear predictor plus independent noise of SD ``s``. On a population of ``--population``
patients (common random noise, Harrell's C by scikit-survival, Brent's method) ``s0`` is set so that the
champion's Harrell's C is the oracle's minus 0.06, and each ``s`` so that the challenger's Harrell's C
differs from the champion's by -0.05, -0.02, -0.01, 0, +0.01, +0.02, +0.05. The differences are checked on
an independent population of the same size (printed: true ΔC by Harrell and by Uno up to tau, true ΔIBS).

Each replication applies the real gate (``survival_model.registry.gate.judge`` with ``registry.gate`` of
params.yaml, the code the pipeline runs) to every challenger against the champion; each model's survival
curves come from a Breslow baseline on the development patients' risks (as a package's do). Recorded: the
promotion, the C part of the rule alone, and the old rule (point estimate of Δ metric > 0.005 and point
ΔIBS <= 0.01). The table gives each rate with its exact (Clopper-Pearson) 95 % interval; the number of
replications is chosen so that a false-promotion rate near 5 % has a binomial SE below 1 % (1000: 0.7 %).

Result: ``benchmarks/RESULTS.md`` between ``<!-- gate-benchmark:begin -->`` and ``<!-- gate-benchmark:end -->``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from survival_model.config import GateParams  # noqa: E402
from survival_model.evaluation.scores import Outcome, breslow_survival, evaluation_times  # noqa: E402
from survival_model.registry.gate import margin_text  # noqa: E402
from survival_model.synthetic import survival as sv  # noqa: E402

SECTION = "## The promotion gate's error rate"
DELTAS = (-0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05)
CHAMPION_BELOW_ORACLE = 0.06
CENSOR_FRACTION = 0.28  # the synthetic cohort's (GeneratorConfig.censor_fraction)
OLD_MARGIN, OLD_IBS_TOLERANCE = 0.005, 0.01


@dataclass(frozen=True)
class Setting:
    """What every replication needs (sent to the workers)."""

    gate: GateParams
    tau: float
    image_effect: float
    champion_sd: float
    challenger_sd: tuple[float, ...]
    seed: int


def read_settings() -> dict[str, Any]:
    """The sections of params.yaml this benchmark uses (read directly: others may be mid-edit)."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return {"gate": GateParams.model_validate(raw["registry"]["gate"]), "tau": float(raw["evaluation"]["tau_days"]),
            "patients": int(sum(raw["synthetic"]["patients"].values())),
            "image_effect": float(raw["synthetic"].get("image_effect", 0.0)),
            "test_fraction": float(raw["training"]["splits"]["test_fraction"])}


# --------------------------------------------------------------------------------------------------
# Cohorts
# --------------------------------------------------------------------------------------------------


def draw_patients(n: int, rng: np.random.Generator, image_effect: float) -> tuple[np.ndarray, Outcome]:
    """True linear predictors and observed outcomes (days) of ``n`` patients from the generator."""
    lp, event_months, entry = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        clinical = sv.sample_clinical(rng)
        imaging = sv.ImagingTruth(et_ml=float(rng.lognormal(math.log(2), 1)), netc_ml=float(rng.lognormal(-1, 1)),
                                  snfh_ml=float(rng.lognormal(math.log(15), 0.8)),
                                  edema_ratio=float(rng.lognormal(math.log(1.5), 0.5)),
                                  necrosis_fraction=float(rng.uniform(0, 0.6)),
                                  rim_irregularity=float(rng.uniform(0, 0.8)), heterogeneity=float(rng.uniform(0, 1)),
                                  infratentorial=bool(rng.uniform() < 0.15),
                                  enhancement=float(np.clip(rng.normal(), -2.5, 2.5)))
        lp[i] = sv.linear_predictor(clinical, imaging, image_effect)[3]
        event_months[i] = sv.draw_event_time(lp[i], rng)
        entry[i] = sv.draw_entry_month(rng)
    censoring = sv.censor(event_months, entry, rng, CENSOR_FRACTION)
    observed = [sv.observed(float(t), float(c)) for t, c in zip(event_months, censoring.censor_months, strict=True)]
    return lp, Outcome.of([o[0] for o in observed], [bool(o[1]) for o in observed])


def harrell(outcome: Outcome, risk: np.ndarray) -> float:
    from sksurv.metrics import concordance_index_censored

    return float(concordance_index_censored(outcome.event, outcome.time, risk)[0])


def calibrate(n: int, seed: int, image_effect: float) -> tuple[float, tuple[float, ...], dict[str, float]]:
    """The champion's noise SD and each challenger's (see the module docstring), on one population."""
    from scipy.optimize import brentq

    rng = np.random.default_rng([seed, 1])
    lp, outcome = draw_patients(n, rng, image_effect)
    noise = rng.normal(size=n)
    oracle = harrell(outcome, lp)

    def c_of(sd: float) -> float:
        return harrell(outcome, lp + sd * noise)

    target = oracle - CHAMPION_BELOW_ORACLE
    champion_sd = float(brentq(lambda s: c_of(s) - target, 0.01, 5.0, xtol=1e-4))
    champion_c = c_of(champion_sd)
    sds = []
    for delta in DELTAS:
        if delta == 0:
            sds.append(champion_sd)
            continue
        sds.append(float(brentq(lambda s, d=delta: c_of(s) - (champion_c + d), 1e-4, 8.0, xtol=1e-5)))
    return champion_sd, tuple(sds), {"oracle_c": oracle, "champion_c": champion_c}


def verify(n: int, seed: int, setting: Setting) -> list[dict[str, float]]:
    """True Δ (challenger - champion) of each case on an independent population: Harrell's C, Uno's C up to
    tau (IPCW from the population itself) and the IBS of Breslow curves fitted on the population."""
    from sksurv.metrics import concordance_index_ipcw, integrated_brier_score

    rng = np.random.default_rng([seed, 2])
    lp, outcome = draw_patients(n, rng, setting.image_effect)
    grid = evaluation_times(outcome, outcome)
    horizon = min(setting.tau, float(outcome.time.max()))

    def scores(risk: np.ndarray) -> tuple[float, float, float]:
        uno = float(concordance_index_ipcw(outcome.surv(), outcome.surv(), risk, tau=horizon)[0])
        curves = breslow_survival(risk, outcome, risk, grid)
        return harrell(outcome, risk), uno, float(integrated_brier_score(outcome.surv(), outcome.surv(), curves, grid))

    champion = scores(lp + setting.champion_sd * rng.normal(size=n))
    out = []
    for sd in setting.challenger_sd:
        challenger = scores(lp + sd * rng.normal(size=n))
        out.append({"harrell": challenger[0] - champion[0], "uno": challenger[1] - champion[1],
                    "ibs": challenger[2] - champion[2], "ibs_champion": champion[2]})
    return out


# --------------------------------------------------------------------------------------------------
# Replications (in worker processes)
# --------------------------------------------------------------------------------------------------


class SimulatedModel:
    """A stand-in for a packaged model: fixed risks per patient, survival curves from a Breslow baseline on
    the development patients' risks (what a package holds)."""

    def __init__(self, risk: np.ndarray, development: np.ndarray, outcome: Outcome) -> None:
        self.values, self.development, self.outcome = risk, development, outcome

    def risk(self, frame: pd.DataFrame) -> np.ndarray:
        return self.values[frame["row"].to_numpy()]

    def survival(self, risk: np.ndarray, times: np.ndarray) -> np.ndarray:
        dev = self.outcome.take(self.development)
        return breslow_survival(self.values[self.development], dev, risk, times)


def replicate(setting: Setting, size: int, cohort: int, test_size: int, rep: int) -> list[dict[str, Any]]:
    """One cohort, one test set, every challenger against the champion through the real gate."""
    from survival_model.registry.gate import judge

    rng = np.random.default_rng([setting.seed, 3, size, rep])
    lp, outcome = draw_patients(cohort, rng, setting.image_effect)
    order = rng.permutation(cohort)
    test, development = np.sort(order[:test_size]), np.sort(order[test_size:])
    frame = pd.DataFrame({"case_id": [f"p{i:04d}" for i in range(cohort)], "row": np.arange(cohort),
                          "time_days": outcome.time, "event": outcome.event.astype(int)})
    dev_frame, test_frame = frame.iloc[development].reset_index(drop=True), frame.iloc[test].reset_index(drop=True)
    champion = SimulatedModel(lp + setting.champion_sd * rng.normal(size=cohort), development, outcome)
    rows = []
    for case, sd in enumerate(setting.challenger_sd):
        challenger = SimulatedModel(lp + sd * rng.normal(size=cohort), development, outcome)
        decision = judge(challenger, test_frame, ("champion", champion, test_frame), dev_frame, test_frame,
                         setting.gate, tau=setting.tau)
        d, ibs = decision.difference[setting.gate.metric], decision.difference["integrated_brier"]
        old = bool(np.isfinite(d["value"]) and np.isfinite(ibs["value"]) and d["value"] > OLD_MARGIN
                   and ibs["value"] <= OLD_IBS_TOLERANCE)
        rows.append({"size": size, "rep": rep, "case": case, "promote": decision.promote,
                     "undefined": decision.outcome == "undefined",
                     "c_part": bool(np.isfinite(d["lower"]) and d["lower"] > setting.gate.margin), "old": old,
                     "delta": d["value"], "lower": d["lower"], "ibs_delta": ibs["value"], "ibs_upper": ibs["upper"],
                     "deaths": decision.deaths})
    return rows


def chunk(setting: Setting, size: int, cohort: int, test_size: int, reps: range) -> list[dict[str, Any]]:
    return [row for rep in reps for row in replicate(setting, size, cohort, test_size, rep)]


# --------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------


def rate(hits: int, n: int) -> str:
    from scipy.stats import binomtest

    ci = binomtest(hits, n).proportion_ci(0.95, method="exact")
    return f"{hits / n:.1%} [{ci.low:.1%}, {ci.high:.1%}]"


def table(results: pd.DataFrame, truth: list[dict[str, float]], test_sizes: dict[int, int]) -> str:
    lines = ["| true ΔC (Harrell) | true ΔC (Uno) | true ΔIBS | test patients | promoted (gate) | C part alone "
             "| old rule (point > +0.005) | median Δ lower bound | median ΔIBS upper bound |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for case, delta in enumerate(DELTAS):
        for size, test_n in test_sizes.items():
            part = results[(results["case"] == case) & (results["size"] == size)]
            n = len(part)
            lines.append(
                f"| {delta:+.2f} ({truth[case]['harrell']:+.3f}) | {truth[case]['uno']:+.3f} | "
                f"{truth[case]['ibs']:+.4f} | {test_n} | {rate(int(part['promote'].sum()), n)} | "
                f"{part['c_part'].mean():.1%} | {rate(int(part['old'].sum()), n)} | {part['lower'].median():+.3f} | "
                f"{part['ibs_upper'].median():+.4f} |")
    return "\n".join(lines)


def ibs_margins(results: pd.DataFrame, test_sizes: dict[int, int], margins: tuple[float, ...] = (0.01, 0.02, 0.03),
                ) -> str:
    """How the IBS margin acts, among the decisions whose C part passed: the share it refuses of the truly
    better challengers (lost power) and of the truly worse ones (a second guard)."""
    lines = ["| test patients | challengers | C part passed | " + " | ".join(
        f"refused by ibs_margin {m:g}" for m in margins) + " |", "|" + " ---: |" * (3 + len(margins))]
    for size, test_n in test_sizes.items():
        for label, sign in (("truly better", 1), ("truly worse", -1)):
            cases = [c for c, d in enumerate(DELTAS) if np.sign(d) == sign]
            passed = results[(results["size"] == size) & results["case"].isin(cases) & results["c_part"]]
            shares = [f"{(passed['ibs_upper'] >= m).mean():.1%}" if len(passed) else "-" for m in margins]
            lines.append(f"| {test_n} | {label} | {len(passed)} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


def rule_text(gate: GateParams) -> str:
    """The gate's settings as the summary states them (``ibs_margin none``: gated on the C part alone)."""
    return (f"metric {gate.metric}, one-sided confidence {gate.confidence:g}, margin {gate.margin:g}, ibs_margin "
            f"{margin_text(gate.ibs_margin)}, {gate.resamples} paired resamples")


def write_results(text: str) -> None:
    from benchmarks.results import record_block

    record_block("gate-benchmark", SECTION, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replications", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--population", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=25, help="replications per worker task")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--raw", type=Path, help="also write every decision to this CSV file")
    args = parser.parse_args()
    started = time.perf_counter()
    settings = read_settings()
    gate: GateParams = settings["gate"]
    cohorts = {1: settings["patients"], 4: 4 * settings["patients"]}
    test_sizes = {k: round(settings["test_fraction"] * n) for k, n in cohorts.items()}
    print(f"gate: {gate.model_dump()}; tau {settings['tau']:g} days; cohorts {cohorts} -> test sets {test_sizes}",
          flush=True)
    champion_sd, sds, population = calibrate(args.population, args.seed, settings["image_effect"])
    setting = Setting(gate, settings["tau"], settings["image_effect"], champion_sd, sds, args.seed)
    print(f"calibrated on {args.population} patients ({time.perf_counter() - started:.0f} s): oracle C "
          f"{population['oracle_c']:.4f}, champion noise SD {champion_sd:.3f} (C {population['champion_c']:.4f}), "
          f"challenger SDs " + ", ".join(f"{d:+.2f}: {s:.3f}" for d, s in zip(DELTAS, sds, strict=True)), flush=True)
    truth = verify(args.population, args.seed, setting)
    print("verified on an independent population: " + ", ".join(
        f"{d:+.2f} -> ΔHarrell {t['harrell']:+.4f}, ΔUno {t['uno']:+.4f}, ΔIBS {t['ibs']:+.4f}"
        for d, t in zip(DELTAS, truth, strict=True)), flush=True)

    jobs = [(size, cohorts[size], test_sizes[size], range(start, min(start + args.chunk, args.replications)))
            for start in range(0, args.replications, args.chunk) for size in cohorts]
    rows: list[dict[str, Any]] = []
    done = {size: 0 for size in cohorts}
    simulated = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(chunk, setting, size, cohort, test_n, reps): (size, len(reps))
                   for size, cohort, test_n, reps in jobs}
        for future in as_completed(futures):
            size, count = futures[future]
            rows.extend(future.result())
            done[size] += count
            elapsed = time.perf_counter() - simulated
            share = sum(done.values()) / (len(cohorts) * args.replications)
            print("  replications: " + ", ".join(f"{test_sizes[s]} test patients {done[s]}/{args.replications}"
                                                   for s in cohorts)
                  + f" ({elapsed:.0f} s, about {elapsed / share - elapsed:.0f} s left)", flush=True)
    results = pd.DataFrame(rows)
    if args.raw:
        results.to_csv(args.raw, index=False)
    undefined = int(results["undefined"].sum())
    text = table(results, truth, test_sizes)
    margins = ibs_margins(results, test_sizes)
    print("\n" + text + "\n\n" + margins + "\n")
    worst = max(results[(results["case"] == c) & (results["size"] == s)]["promote"].mean()
                for c, d in enumerate(DELTAS) if d < 0 for s in cohorts)
    command = "`.venv/bin/python benchmarks/gate.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("replications", args.replications), ("seed", args.seed),
                                                     ("workers", args.workers), ("population", args.population))) + "`"
    total = time.perf_counter() - started
    summary = (
        f"{args.replications} replications per row (fresh cohort and test set each; binomial SE of a 5 % rate "
        f"{math.sqrt(0.05 * 0.95 / args.replications):.1%}), {len(DELTAS)} challengers per replication against "
        f"one champion, all through `survival_model.registry.gate.judge` with `registry.gate` of params.yaml "
        f"({rule_text(gate)}). Population ({args.population} patients): oracle "
        f"Harrell's C {population['oracle_c']:.3f}, champion {population['champion_c']:.3f} (noise SD "
        f"{champion_sd:.2f}); the true Δ columns are measured on an independent population of the same size "
        f"(target in the first column, measured in brackets). Rates with exact 95 % intervals. `C part alone`: the "
        f"lower bound of Δ{gate.metric} above the margin, whatever the IBS. Old rule: point Δ{gate.metric} > 0.005 "
        f"and point ΔIBS <= 0.01. Undefined decisions: {undefined} of {len(results)}. Highest false-promotion rate "
        f"of a truly worse challenger: {worst:.1%}. The champion's population integrated Brier score: "
        f"{truth[0]['ibs_champion']:.3f}. {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{args.workers} workers, {total / 60:.1f} min, {datetime.now(UTC).date().isoformat()}.")
    print(summary)
    if not args.no_write:
        write_results(f"{summary}\n\n{text}\n\nThe IBS non-inferiority margin, among the decisions whose C part "
                      f"passed (the share each margin would refuse; the gate used {margin_text(gate.ibs_margin)}):\n\n"
                      f"{margins}\n\nCommand: {command}")
        print("written to benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
