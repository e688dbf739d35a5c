"""What the ``survival-model`` command line prints: the tables of a run's results, of predictions, of an
institution check and of the registered versions, and the progress display while a flow runs (one bar per
stage, drawn from the counts of ``flows.progress``, every log line to a file).

The commands (``flows.cli``) decide what to run; this module only renders. Like them, it imports Prefect only
inside :func:`run_display`, after the command has set Prefect's settings.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from survival_model.config import Params, ScheduleParams
from survival_model.imageio import read_json

console = Console(soft_wrap=True)  # never hard-wrap paths a user will copy


@contextmanager
def cohort_progress(out_dir: Path) -> Iterator[Callable[[int, int], None]]:
    """A bar while a synthetic cohort is generated: yields the generator's ``progress(done, total)`` callback."""
    columns = (TextColumn("[bold]generating synthetic cohort"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("patients", total=None)

        def update(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        yield update
    console.print(f"synthetic cohort written to [bold]{out_dir}[/] (ground truth in {out_dir / 'ground_truth'})")


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class StageBars(logging.Handler):
    """One bar per stage, drawn from the count records of ``flows.progress`` (``record.stage``, ``done``,
    ``total``, ``unit``)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.bars: dict[str, TaskID] = {}

    def emit(self, record: logging.LogRecord) -> None:
        stage, done, total = (getattr(record, k, None) for k in ("stage", "done", "total"))
        if not isinstance(stage, str) or not isinstance(done, int) or not isinstance(total, int):
            return
        if stage not in self.bars:
            self.bars[stage] = self.progress.add_task(stage, total=total, unit=getattr(record, "unit", ""))
        self.progress.update(self.bars[stage], completed=done, total=total)



#: The library's loggers (``survival_model.*``): the CLI shows their INFO lines in the log file and, through
#: ``PREFECT_LOGGING_EXTRA_LOGGERS``, in the Prefect UI.
LIBRARY_LOGGER = "survival_model"

@contextmanager
def run_display(log_file: Path, verbose: bool) -> Iterator[None]:
    """While a flow runs: every log line (Prefect's per-task states included) goes to ``log_file``; the
    terminal shows one progress bar per stage and only warnings and errors (``verbose``: every log line, as
    Prefect prints them, and no bars). Restores the logging it changed."""
    from prefect.logging.handlers import PrefectConsoleHandler  # Prefect: after the command set its settings

    from flows.progress import PROGRESS_LOGGER  # Prefect (at its top): likewise

    if not verbose:
        import mlflow  # noqa: F401 - mlflow: sets up its loggers on import; imported now so they stay redirected

    root, counts = logging.getLogger(), logging.getLogger(PROGRESS_LOGGER)
    library = logging.getLogger(LIBRARY_LOGGER)  # the stages' own lines (epochs, quarantines, devices): INFO
    library_level = library.level
    mlflow_logger = logging.getLogger("mlflow")  # its INFO lines (database set-up, model validation) to the file
    mlflow_state = (mlflow_logger.level, mlflow_logger.handlers[:], mlflow_logger.propagate)
    py_warnings = logging.getLogger("py.warnings")
    consoles = [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)]
    console_levels, counts_state = [h.level for h in consoles], (counts.level, counts.propagate)
    warnings_state = (py_warnings.handlers[:], py_warnings.propagate)
    warned = _Count()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setLevel(logging.INFO)
    if consoles and consoles[0].formatter is not None:
        to_file.setFormatter(consoles[0].formatter)  # Prefect's own line format, run names included
    root.addHandler(to_file)
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    progress = Progress(*columns, console=console, transient=False, disable=verbose)
    bars = StageBars(progress)
    console.print(f"log: {log_file}" + ("" if verbose else " (every line, Prefect's task states included; "
                                                          "--verbose prints them here)"))
    try:
        if not verbose:
            for handler in consoles:
                handler.setLevel(max(handler.level, logging.WARNING))
            # libraries' Python warnings (with their tracebacks) go to the file and are counted; the stages
            # log what they mean for the run as warnings of their own
            logging.captureWarnings(True)
            py_warnings.handlers, py_warnings.propagate = [to_file, warned], False
            mlflow_logger.handlers, mlflow_logger.propagate = [to_file], False
        library.setLevel(logging.INFO)
        counts.setLevel(logging.INFO)
        counts.propagate = False
        counts.addHandler(bars)
        with progress:
            yield
    finally:
        if not verbose:
            logging.captureWarnings(False)
            py_warnings.handlers, py_warnings.propagate = warnings_state
            mlflow_logger.setLevel(mlflow_state[0])
            mlflow_logger.handlers, mlflow_logger.propagate = mlflow_state[1], mlflow_state[2]
            if warned.count:
                console.print(f"{warned.count} warning(s) from libraries, in {log_file}")
        counts.removeHandler(bars)
        library.setLevel(library_level)
        for handler, level in zip(consoles, console_levels, strict=True):
            handler.setLevel(level)
        counts.setLevel(counts_state[0])
        counts.propagate = counts_state[1]
        root.removeHandler(to_file)
        to_file.close()


def print_result(result: Any, up: dict[str, str]) -> None:
    summary = result.summary
    table = Table(title="Canonical cohort", show_lines=False)
    for column in ("site", "patients", "events", "censored %", "quarantined"):
        table.add_column(column, justify="left" if column == "site" else "right")
    for site, s in summary["sites"].items():
        censored = "" if s["censored_fraction"] is None else f"{100 * s['censored_fraction']:.0f}"
        events = "-" if s["events"] is None else str(s["events"])  # "-": a site without outcomes (to predict)
        table.add_row(site, str(s["patients"]), events, censored, str(s["quarantined"]))
    console.print()
    console.print(table)
    if summary["quarantine_by_reason"]:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["quarantine_by_reason"].items())
        console.print(f"quarantined by reason: {reasons}")
    errors = {**summary.get("clinical_errors", {}), **summary.get("image_source_errors", {})}
    for site, message in errors.items():
        console.print(f"[bold red]site {site} could not be read:[/] {message}")
    features = result.features_summary
    families = ", ".join(f"{n} {prefix}*" for prefix, n in features["feature_columns"].items())
    console.print(f"features: {features['patients']} patients x {features['columns']} columns ({families})")
    later = {k: v for k, v in features["quarantined_by_stage"].items() if k in ("preprocess", "features")}
    if later:
        console.print(f"[bold yellow]quarantined after ingestion:[/] {later} (reasons in the quarantine table)")
    _print_training(result.training_metrics)
    _print_comparison(result.evaluation)
    if result.registry is not None:
        _print_registry(result.registry)
    console.print(f"\n[bold]results[/] (work directory {result.work_dir})")
    console.print(f"  features    {result.features}")
    console.print(f"  cohort      {result.cohort}")
    console.print(f"  quarantine  {result.all_quarantine} (all stages)")
    console.print(f"  QC          {result.features.parent / 'qc_table.csv'}")
    console.print(f"  report      {result.cohort.parent / 'summary.md'} and cohort_summary.png")
    console.print(f"  model       {result.training} (test predictions, metrics, learning curves)")
    console.print(f"  comparison  {result.evaluation / 'comparison'} (every score with intervals, CV, per site)")
    console.print(f"  explanation {result.evaluation / 'explanation'} (permutation importance, Grad-CAM)")
    console.print(f"  report      {result.evaluation / 'report' / 'report.html'} (also in the MLflow run)")
    console.print(f"  MLflow run  {result.mlflow_link}")
    if "prefect" in up:
        console.print(f"  Prefect UI  {up['prefect']}")
    else:
        console.print("  watch runs in a UI: survival-model ui start")


def _print_registry(registry: Any) -> None:
    name, version = registry.model_name, registry.version
    if registry.registered:
        console.print(f"[bold]registry:[/] {name} version {version} registered (alias challenger)")
    else:
        console.print(f"[bold]registry:[/] unchanged data, params and code: {name} version {version} was registered "
                      "before; no new version")
    decision = registry.decision
    if decision is not None:
        verdict = "[green]promoted to champion[/]" if decision["promote"] else "[yellow]not promoted[/]"
        console.print(f"promotion gate: {verdict}: {decision['reason']}")
    champion = f"version {registry.champion}" if registry.champion is not None else "none"
    console.print(f"champion: {champion} (models:/{name}@champion; `survival-model models list`)")


def _ci(estimate: dict[str, Any]) -> str:
    from survival_model.metrics import format_ci  # sksurv (1.2 s): only when results are printed, not --version

    return format_ci(estimate.get("value"), estimate.get("low"), estimate.get("high"))


def _print_training(metrics: dict[str, Any]) -> None:
    table = Table(title=f"Model: {metrics['variant']} {metrics['objective']}, backbone {metrics['backbone']}")
    for column in ("scored on", "C-index (95% CI)", "patients"):
        table.add_column(column, justify="left" if column == "scored on" else "right")
    test = metrics["test"]
    table.add_row("ensemble of folds, locked test set", _ci(test["cindex"]), str(test["patients"]))
    if metrics.get("oracle"):
        table.add_row("oracle (true risk), same patients", _ci(metrics["oracle"]["cindex"]),
                      str(metrics["oracle"]["patients"]))
    cv = metrics["cv"]
    table.add_row(f"{len(cv['per_fold'])} folds, validation (mean ± SD)",
                  f"{cv['validation_cindex_mean']:.3f} ± {cv['validation_cindex_sd']:.3f}", "")
    console.print(table)


def _print_comparison(folder: Path) -> None:
    frame = pd.read_csv(folder / "comparison" / "comparison.csv", index_col="model")
    cv = read_json(folder / "comparison" / "cv.json")

    def ci(row: Any, metric: str) -> str:
        return _ci({"value": row.get(metric), "low": row.get(f"{metric}_low"), "high": row.get(f"{metric}_high")})

    oof_file = folder / "comparison" / "oof.csv"
    if oof_file.is_file():
        _print_oof(pd.read_csv(oof_file, index_col="model"), ci)
    table = Table(title="Confirmation on the locked test set (95% bootstrap CI; ΔC paired with the GPA; "
                        "CV mean ± SD)")
    for column in ("model", "Harrell's C", "Uno's C", "integrated Brier", "ΔC vs GPA", "CV Harrell's C"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, row in frame.iterrows():
        folds = cv.get(str(model), {}).get("harrell_c")
        table.add_row(str(model), ci(row, "harrell_c"), ci(row, "uno_c"), ci(row, "integrated_brier"),
                      ci(row, "delta_harrell_c"), f"{folds['mean']:.3f} ± {folds['sd']:.3f}" if folds else "-")
    console.print(table)
    audit = folder / "report" / "audit.json"
    for finding in read_json(audit)["findings"] if audit.is_file() else []:
        colour = "red" if finding["level"] == "warning" else "yellow"
        console.print(f"[bold {colour}]{finding['level']}:[/] {finding['text']}")


def _print_oof(oof: Any, ci: Any) -> None:
    """The comparison: every model out of fold on all development patients, paired differences."""
    table = Table(title="Models out of fold on the development patients (95% bootstrap CI; Δ paired)")
    for column in ("model", "Harrell's C", "Uno's C", "oracle headroom", "ΔC vs tabular-only", "ΔC vs GPA"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, row in oof.iterrows():
        table.add_row(str(model), ci(row, "harrell_c"), ci(row, "uno_c"), ci(row, "headroom"),
                      ci(row, "vs_tabular_harrell_c"), ci(row, "vs_gpa_harrell_c"))
    console.print(table)


def print_predictions(result: Any) -> None:
    predictions = pd.read_csv(result.folder / "predictions.csv")
    table = Table(title=f"{result.model} version {result.version}: {result.predicted} patient(s) predicted")
    survival = [c for c in predictions.columns if c.startswith("survival_")]
    for column in ("case_id", "site", "risk", "group", *(c.removeprefix("survival_") for c in survival),
                   "median (months)", "50% interval (months)"):
        table.add_column(column, justify="left" if column in ("case_id", "site") else "right")

    def months(days: float) -> str:
        return "-" if pd.isna(days) else f"{days / (365.25 / 12):.1f}"

    for _, row in predictions.iterrows():
        table.add_row(str(row["case_id"]), str(row["site"]), f"{row['risk']:.3f}", str(row["risk_group"]),
                      *(f"{row[c]:.2f}" for c in survival), months(row["median_days"]),
                      f"{months(row['interval_low_days'])}-{months(row['interval_high_days'])}")
    console.print(table)
    missing = pd.read_csv(result.folder / "not_predicted.csv")
    if len(missing):
        console.print(f"[bold yellow]{len(missing)} patient(s) not predicted:[/]")
        for _, row in missing.iterrows():
            console.print(f"  {row['case_id']} ({row['stage']}, {row['reason']}): {row['message']}")
    console.print(f"predictions: {result.folder / 'predictions.csv'} (and .parquet; not_predicted.csv)")
    console.print(f"MLflow run:  {result.mlflow_link}")


def print_check(params_path: Path, params: Params, found: dict[str, str]) -> None:
    """A valid params file's institutions: layout, labels, the cases found (or why none) and the clinical table."""
    table = Table(title=f"{params_path}: valid")
    for column in ("institution", "layout", "labels", "cases found", "clinical table"):
        table.add_column(column)
    for name, inst in params.institutions.items():
        clinical = "found" if inst.clinical.path.is_file() else "[red]missing[/]"
        labels = inst.labels if isinstance(inst.labels, str) else "custom"
        table.add_row(name, inst.images.layout, labels, found[name], clinical)
    console.print(table)
    console.print(f"work directory: {params.work_dir}\nMLflow: {params.mlflow_uri}")


def print_versions(name: str, frame: Any, history: list[dict[str, Any]]) -> None:
    """The registered versions (``Registry.table``) and the last champion changes."""
    frame = frame[["version", "aliases", "created", "test_uno_c", "test_ibs", "gate", "model"]]
    table = Table(title=f"{name}: registered versions (test scores on each version's own locked test set)")
    for column in frame.columns:
        table.add_column(column, justify="right" if column.startswith("test_") or column == "version" else "left")
    for _, row in frame.iterrows():
        table.add_row(*("-" if isinstance(v, float) and v != v else f"{v:.3f}" if isinstance(v, float) else str(v)
                        for v in row))
    console.print(table)
    for entry in history[-5:]:
        before = f"was v{entry['previous']}" if entry.get("previous") is not None else "the first"
        console.print(f"  {entry['at']}  champion v{entry['version']} ({before}) by {entry['by']}: {entry['reason']}")


def print_serving(where: str, api: str, retrain: str, predict: str, schedule: ScheduleParams,
                  upcoming: datetime | None, params_path: Path) -> None:
    """What ``serve`` serves: the retraining and prediction deployments (full names), and how to predict now."""
    console.print(f"orchestration: {where}")
    console.print("serving from this process (Ctrl+C or SIGTERM stops it and pauses the deployments until served "
                  "again):")
    when = f"next run {upcoming:%Y-%m-%d %H:%M %Z}" if upcoming else \
        "schedule inactive (registry.schedule.active: false), deployment paused"
    console.print(f"  {retrain:32s} retraining, cron '{schedule.cron}' ({schedule.timezone}), {when}")
    console.print(f"  {predict:32s} prediction on demand (no schedule)")
    console.print(f"Prefect UI: {api.removesuffix('/api')}/deployments")
    console.print("predict now (another shell; -p model=challenger or -p gradcam=true to change):\n  "
                  f"PREFECT_API_URL={api} {shlex.quote(sys.executable)} -m prefect deployment run "
                  f"'{predict}' -p params_path={shlex.quote(str(params_path.resolve()))}")
