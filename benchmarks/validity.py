"""Does the image branch earn its place? Every model's out-of-fold C-index on synthetic cohorts whose image-only
effect has a declared strength, with paired intervals, in one command.

    .venv/bin/python benchmarks/validity.py [--sizes 150 600] [--strengths 0 0.6 1.0] [--seed 20250515]
        [--candidates '[{"image_features": "global", "at": ["600:0.6"]}, {"fusion": "concat", "tabular_hidden": [32]}]']
        [--candidates-at 600:0.6] [--set key=value ...] [--out benchmarks/out/validity] [--no-record] [--resume]

For each cohort size and strength of the generator's image-only effect (``synthetic.image_effect``: a log hazard
ratio per SD of the enhancing tumour's contrast uptake, rendered in the post-contrast T1 whatever the strength)
the whole pipeline runs as the main command does (``params.yaml`` with the synthetic cohort moved to
``<out>/data/n<size>-s<strength>``, its sites scaled to the size, no deliberately bad patients, no registry),
in one shared work directory: the images are identical across strengths and the 150 patients are the first of
the 600, so ingestion, preprocessing, features and image inputs are computed once per patient. The main network
(``params.yaml``: the default hybrid) is compared with the tabular-only network, the clinical baselines and the
oracle (the true risk) on the same splits, **out of fold on all development patients**
(``survival_model.evaluation.oof``); at the ``--candidates-at`` cohorts also with the ``--candidates`` (default:
the hybrid with globally pooled image features, and the earlier concatenation fusion), which is how the
defaults were chosen. Printed and recorded
(``benchmarks/RESULTS.md``, between ``validity-benchmark`` markers): per cohort and model, Harrell's C with its
95% bootstrap interval, the share of the oracle's headroom ``(C - 0.5) / (C_oracle - 0.5)``, the paired
differences to the tabular-only network and to the GPA, and the main network's Grad-CAM energy share inside
tumour + edema against their area share (locked test patients); and, fold by fold, the main network's image
epoch choice with its validation C against the tabular-only network's.

Goals (issue 13): at the default strength on 600 patients the hybrid reaches >= 0.85 of the oracle's headroom and
beats the tabular-only network with a paired interval above 0; at strength 0 it is no worse than tabular-only
(interval includes 0 or better); it beats the GPA with an interval above 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SITES = {"site_a": 60, "site_b": 50, "site_c": 38}  # the default cohort's shares


def site_counts(size: int) -> dict[str, int]:
    """``size`` patients over the sites in the default cohort's proportions (largest remainder)."""
    total = sum(SITES.values())
    raw = {s: size * n / total for s, n in SITES.items()}
    counts = {s: int(v) for s, v in raw.items()}
    for site in sorted(raw, key=lambda s: raw[s] - counts[s], reverse=True)[: size - sum(counts.values())]:
        counts[site] += 1
    return counts


def _relocate(node: Any, old: str, new: str) -> Any:
    """Every string value under ``node`` starting with ``old`` (the default cohort's folder) moved to ``new``."""
    if isinstance(node, dict):
        return {k: _relocate(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_relocate(v, old, new) for v in node]
    if isinstance(node, str) and node.startswith(old):
        return new + node[len(old):]
    return node


def params_file(out: Path, size: int, strength: float, networks: list[dict[str, Any]], seed: int) -> Path:
    """``params.yaml`` for one cohort of the benchmark, written to ``<out>/params/``."""
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    old = str(base["synthetic"]["out_dir"]).rstrip("/")
    data = (out / "data" / f"n{size}-s{strength:g}").resolve()
    params = _relocate(base, old, str(data))
    params["work_dir"] = str((out / "work").resolve())
    params["synthetic"].update({"out_dir": str(data), "patients": site_counts(size), "bad_patients": False,
                                "image_effect": strength, "seed": seed})
    params["registry"]["enabled"] = False
    params["evaluation"]["networks"] = [{"variant": "tabular"}, *networks]
    params["evaluation"]["importance_repeats"] = 1
    params["evaluation"]["gradcam_panel"] = 4
    path = out / "params" / f"n{size}-s{strength:g}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def candidates_at(candidates: list[dict[str, Any]], where: set[tuple[int, float]], size: int,
                  strength: float) -> list[dict[str, Any]]:
    """The candidate networks trained on the cohort ``size`` x ``strength``: every candidate at the
    ``--candidates-at`` cohorts, less those whose own ``"at"`` list (``"size:strength"``) leaves it out."""
    if (size, strength) not in where:
        return []
    here = f"{size}:{strength:g}"
    return [{k: v for k, v in c.items() if k != "at"} for c in candidates
            if "at" not in c or here in {f"{int(a.split(':')[0])}:{float(a.split(':')[1]):g}" for a in c["at"]}]


def run_pipeline(path: Path, overrides: dict[str, Any]) -> Any:
    """The main command's pipeline on ``path`` (generating the cohort when missing); its ``PipelineResult``."""
    from flows.cli import default_services_file, ensure_synthetic_cohort, prefect_environment
    from survival_model.config import load_params

    params = load_params(path, overrides or None)
    ensure_synthetic_cohort(params)
    prefect_environment(params, default_services_file(path))
    from flows.pipeline import pipeline
    from flows.runners import task_runner_for

    return pipeline.with_options(task_runner=task_runner_for(params))(params_path=str(path),
                                                                     overrides=overrides or None)


def image_share(path: Path) -> float:
    """The share of the true risk's variance the image-only effect explains on this cohort (its ground truth)."""
    import yaml as _yaml

    data = Path(_yaml.safe_load(path.read_text(encoding="utf-8"))["synthetic"]["out_dir"])
    model = json.loads((data / "ground_truth" / "generative_model.json").read_text(encoding="utf-8"))
    return float(model["image_effect"]["variance_share"])


def rows_of(evaluation: Path, size: int, strength: float, seconds: float, share: float) -> list[dict[str, Any]]:
    import pandas as pd

    oof = pd.read_csv(evaluation / "comparison" / "oof.csv", index_col="model")
    meta = json.loads((evaluation / "comparison" / "oof.json").read_text(encoding="utf-8"))
    cams = evaluation / "explanation" / "gradcam.csv"
    cam = pd.read_csv(cams) if cams.is_file() else None
    out = []
    for name, row in oof.iterrows():
        record = {"size": size, "strength": strength, "share": share, "model": str(name), "patients": meta["patients"],
                  "deaths": meta["deaths"], "seconds": seconds, "tabular": meta["references"].get("tabular", ""),
                  **{k: float(v) for k, v in row.items()}}
        if cam is not None and len(cam) and str(name) == oof.index[0]:
            record["cam_share"] = float(cam["cam_share_tumour_edema"].median())
            record["area_share"] = float(cam["area_share_tumour_edema"].median())
        out.append(record)
    return out


def fold_rows(work_dir: Path, training: Path, evaluation: Path, size: int, strength: float) -> list[dict[str, Any]]:
    """The main network's image-epoch choice in each fold that had an image epoch to choose (its fold record,
    ``summary.image_gain``) with the fold's validation C of the main network and of the tabular-only network
    (from the out-of-fold risks, per fold). A fold that kept epoch 0 scores as the tabular-only network."""
    import pandas as pd

    from survival_model.metrics import harrell_c

    oof = pd.read_parquet(evaluation / "comparison" / "oof_risks.parquet")
    main = str(pd.read_csv(evaluation / "comparison" / "oof.csv", index_col="model").index[0])
    tabular = json.loads((evaluation / "comparison" / "oof.json").read_text(encoding="utf-8"))["references"]["tabular"]

    def validation_c(model: str, fold: int) -> float:
        part = oof[(oof["model"] == model) & (oof["fold"] == fold)]
        return harrell_c(part["risk"].to_numpy(), part["time_days"].to_numpy(), part["event"].to_numpy())

    out = []
    folders = json.loads((training / "result.json").read_text(encoding="utf-8"))["folds"]  # in the splits' order
    for index, folder in enumerate(folders):
        config = json.loads((work_dir / folder / "config.json").read_text(encoding="utf-8"))
        summary, gain = config["summary"], config["summary"].get("image_gain")
        if not gain or gain["best_epoch"] == 0:
            continue
        out.append({"size": size, "strength": strength, "fold": config["fold"], "stop": summary["patients_stop"],
                    "stop_deaths": summary["deaths_stop"], **gain, "hybrid_c": validation_c(main, index),
                    "tabular_c": validation_c(tabular, index)})
    return out


def fold_table(folds: list[dict[str, Any]]) -> str:
    lines = ["| cohort (patients / strength) | fold | stopping (deaths) | best image epoch | its gain | "
             "cross-fitted gain (SE) | kept | validation C main / tabular-only |",
             "| --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    for f in folds:
        lines.append(f"| {f['size']} / {f['strength']:g} | {f['fold']} | {f['stop']} ({f['stop_deaths']}) | "
                     f"{f['best_epoch']} | {f['gain']:.3f} | {f['honest_gain']:.3f} ({f['standard_error']:.3f}) | "
                     f"{'yes' if f['kept'] else 'no'} | {f['hybrid_c']:.3f} / {f['tabular_c']:.3f} |")
    return "\n".join(lines)


def _ci(row: dict[str, Any], key: str) -> str:
    from survival_model.metrics import format_ci

    return format_ci(row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high"))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| patients (dev, deaths) | image effect (share of var) | model | Harrell's C (OOF) | headroom | "
             "ΔC vs tabular-only | ΔC vs GPA | CAM / area share |",
             "| --- | ---: | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cam = f"{r['cam_share']:.2f} / {r['area_share']:.2f}" if "cam_share" in r else ""
        tabular = "(reference)" if r["model"] == r["tabular"] else _ci(r, "vs_tabular_harrell_c")
        gpa = "(reference)" if r["model"] == "gpa" else _ci(r, "vs_gpa_harrell_c")
        lines.append(f"| {r['size']} ({r['patients']}, {r['deaths']}) | {r['strength']:g} ({r['share']:.0%}) | "
                     f"{r['model']} | "
                     f"{_ci(r, 'harrell_c')} | {_ci(r, 'headroom')} | {tabular} | {gpa} | {cam} |")
    return "\n".join(lines)


def record(text: str, command: str) -> None:
    from benchmarks.results import record_block

    record_block("validity-benchmark", "## Does the image branch earn its place? (validity)",
                 f"{text}\n\nCommand: `{command}` ({time.strftime('%Y-%m-%d')}, {platform.node() or 'host'}, "
                 f"{os.cpu_count()} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 600])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.6, 1.0])
    parser.add_argument("--seed", type=int, default=20250515)
    parser.add_argument("--candidates", default='[{"image_features": "global"}, {"fusion": "concat", '
                                                '"tabular_hidden": [32]}]',
                        help="JSON list of further networks (overrides of training.network) to compare; a "
                             'candidate\'s own "at": ["600:0.6"] limits it to those cohorts')
    parser.add_argument("--candidates-at", nargs="*", default=["600:0.6"],
                        help="size:strength cohorts where the candidates are trained too")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value (params overrides)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "validity")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of <out>/rows.json and skip the cohorts already measured there")
    args = parser.parse_args()
    from survival_model.config import parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    candidates = json.loads(args.candidates)
    where = {(int(c.split(":")[0]), float(c.split(":")[1])) for c in args.candidates_at}
    saved, saved_folds = args.out / "rows.json", args.out / "folds.json"
    resumed = args.resume and saved.is_file()
    rows: list[dict[str, Any]] = json.loads(saved.read_text(encoding="utf-8")) if resumed else []
    folds: list[dict[str, Any]] = json.loads(saved_folds.read_text(encoding="utf-8")) \
        if resumed and saved_folds.is_file() else []
    done = {(r["size"], r["strength"]) for r in rows}
    started = time.perf_counter()
    for size in sorted(args.sizes):
        for strength in args.strengths:
            if (size, strength) in done:
                print(f"{size} patients, image effect {strength:g}: kept from {saved}", flush=True)
                continue
            path = params_file(args.out, size, strength, candidates_at(candidates, where, size, strength), args.seed)
            print(f"[{time.perf_counter() - started:7.0f} s] {size} patients, image effect {strength:g}: {path}",
                  flush=True)
            began = time.perf_counter()
            result = run_pipeline(path, overrides)
            evaluation = Path(result.evaluation)
            rows += rows_of(evaluation, size, strength, time.perf_counter() - began, image_share(path))
            folds += fold_rows(Path(result.work_dir), Path(result.training), evaluation, size, strength)
            saved.write_text(json.dumps(rows, indent=1), encoding="utf-8")
            saved_folds.write_text(json.dumps(folds, indent=1), encoding="utf-8")
            print(table([r for r in rows if r["size"] == size and r["strength"] == strength]), flush=True)
    rows.sort(key=lambda r: (r["size"], r["strength"]))  # stable: each cohort's models keep their order
    folds.sort(key=lambda r: (r["size"], r["strength"]))
    text = (f"{table(rows)}\n\nThe main network's image epoch, fold by fold "
            f"(`training/folds/<fold>/<key>/config.json`, `summary.image_gain`; gains in the stopping loss, nats "
            f"per death; folds whose best epoch was 0 left out: they score as tabular-only):\n\n{fold_table(folds)}")
    print("\n" + text)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if not args.no_record:
        arguments = " ".join(a if a.replace(":", "").replace(".", "").replace("-", "").isalnum() else f"'{a}'"
                             for a in sys.argv[1:])
        record(text, f".venv/bin/python benchmarks/validity.py {arguments}".strip())


if __name__ == "__main__":
    main()
