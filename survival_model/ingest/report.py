"""The cohort at a glance: a summary table, a Markdown digest and a figure.

The figure shows what a reader would otherwise have to assemble from tables: Kaplan-Meier curves per
site (scikit-survival's estimator, with pointwise 95% intervals), patients and censoring per site, and
quarantined patients by reason. Patients without an outcome (a site declaring no survival: patients to
predict) are left out of the curves and the censoring counts, and shown as such.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from survival_model.config import SEQUENCES
from survival_model.imageio import write_bytes
from survival_model.ingest.clinical import has_outcome
from survival_model.quarantine import REASONS

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def site_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per site: the table shown in the Prefect UI and logged to MLflow."""
    rows = []
    for site, s in summary["sites"].items():
        rows.append({
            "site": site,
            "patients": s["patients"],
            "events": s["events"],
            "censored": s["censored"],
            "censored %": None if s["censored_fraction"] is None else round(100 * s["censored_fraction"], 1),
            "median time (days)": None if s["median_time_days"] is None else round(s["median_time_days"], 1),
            "no outcome": s.get("without_outcome", 0),
            "quarantined": s["quarantined"],
        })
    return rows


def _cell(value: Any) -> str:
    """A Markdown table cell: ``-`` where there is no value (e.g. no outcome at the site)."""
    return "-" if value is None else str(value)


def quarantine_table(quarantine: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"site": r.site, "case_id": r.case_id, "reason": r.reason, "message": r.message}
        for r in quarantine.itertuples(index=False)
    ]


def summary_markdown(summary: dict[str, Any], run_link: str | None = None) -> str:
    """A short Markdown digest of the ingestion (for the Prefect UI and the MLflow run)."""
    lines = [
        "# Ingestion summary",
        "",
        f"**{summary['patients']} patients** in the canonical cohort, {summary['events']} deaths observed; "
        f"**{summary['quarantined_patients']} quarantined**. Data fingerprint `{summary['fingerprint']}`.",
    ]
    without = summary.get("without_outcome", 0)
    if without:
        lines += ["", f"{without} patient(s) have no survival outcome (their site declares no survival "
                      "columns): they can be predicted, not trained on; `-` below."]
    lines += [
        "",
        "| site | patients | events | censored % | median time (days) | no outcome | quarantined |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in site_table(summary):
        cells = [row[k] for k in ("site", "patients", "events", "censored %", "median time (days)", "no outcome",
                                  "quarantined")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if summary["quarantine_by_reason"]:
        lines += ["", "| quarantine reason | patients | meaning |", "| --- | ---: | --- |"]
        for reason, n in summary["quarantine_by_reason"].items():
            lines.append(f"| `{reason}` | {n} | {REASONS.get(reason, '')} |")
    lines += _fallback_lines(summary)
    lines += _sequence_lines(summary)
    errors = {**summary.get("clinical_errors", {}), **summary.get("image_source_errors", {})}
    if errors:
        lines += ["", "**Site-level errors** (every patient of the site is quarantined):", ""]
        lines += [f"- `{site}`: {msg}" for site, msg in errors.items()]
    if run_link:
        lines += ["", f"MLflow run: {run_link}"]
    return "\n".join(lines) + "\n"


def _sequence_lines(summary: dict[str, Any]) -> list[str]:
    """Patients per sequence and site, shown where some site's patients lack a sequence (a site that declares
    fewer sequences): those sequences' features are NaN and their network channels zeros for those patients."""
    counts: dict[str, dict[str, int]] = summary.get("sequences") or {}
    patients = {site: s["patients"] for site, s in summary["sites"].items()}
    if all(n == patients.get(site, 0) for site, per in counts.items() for n in per.values()):
        return []
    names = [s for s in SEQUENCES if any(s in per for per in counts.values())]
    lines = ["", "**Sequences per site** (patients with each; a sequence a patient lacks gives NaN features and "
             "a channel of zeros in the network's image input):", "",
             "| site | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for site, per in counts.items():
        lines.append(f"| {site} | " + " | ".join(f"{per.get(s, 0)}/{patients.get(site, 0)}" for s in names) + " |")
    return lines


def _fallback_lines(summary: dict[str, Any]) -> list[str]:
    """Primary sites that mapped to ``other`` only by fallback, per site: counts and pseudonymous ids, never the
    text (a free-text cell may hold a name; the site's own table shows it to whoever may read it)."""
    lines = []
    for site, clinical in sorted(summary.get("clinical_reports", {}).items()):
        rows: dict[str, int] = (clinical or {}).get("primary_mapped_to_other") or {}
        if rows:
            n = sum(rows.values())
            lines.append(f"- `{site}` primary: {n} value{'s' if n > 1 else ''} not in the vocabulary, mapped to "
                         f"`other` (row{'s' if n > 1 else ''} of patient{'s' if len(rows) > 1 else ''} "
                         f"{', '.join(sorted(rows))}); declare the code in "
                         f"`institutions.{site}.clinical.values.primary` if it is another category")
    return ["", "**Clinical values mapped by fallback:**", "", *lines] if lines else []


def plot_cohort(cohort: pd.DataFrame, quarantine: pd.DataFrame, path: Path) -> Path:
    """Kaplan-Meier per site, patients/censoring per site, quarantine by reason -> PNG."""
    # Imported here: matplotlib and scikit-survival cost about 2 s to import, and only a cohort that
    # is being (re)built draws its figure; a warm pipeline run never does.
    from matplotlib.figure import Figure  # matplotlib: only when the figure is drawn
    from matplotlib.ticker import MaxNLocator  # matplotlib: only when the figure is drawn

    # The object-oriented Figure API (no pyplot): no global backend state, safe in worker threads.
    fig = Figure(figsize=(16, 4.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.4, 1, 1.2]})
    km, bars, reasons = axes
    _plot_survival(km, cohort)
    _plot_sites(bars, cohort)

    if len(quarantine):
        counts = quarantine.groupby("reason")["case_id"].nunique().sort_values()
        reasons.barh(counts.index.astype(str), counts.to_numpy(), color="#dd8452")
        reasons.xaxis.set_major_locator(MaxNLocator(integer=True))
        reasons.set(title="Quarantined patients by reason", xlabel="patients")
    else:
        reasons.text(0.5, 0.5, "no patient quarantined", ha="center", va="center")
        reasons.set_axis_off()
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return write_bytes(buffer.getvalue(), path)


def _plot_survival(km: Axes, cohort: pd.DataFrame) -> None:
    """Kaplan-Meier per site over its patients with an outcome; a site whose patients have none is named
    in the legend ("no outcome, to predict") instead of drawn."""
    from sksurv.nonparametric import kaplan_meier_estimator  # sksurv (1.2 s): only when the figure is drawn

    known = cohort[has_outcome(cohort)]
    for site, rows in cohort.groupby("site", sort=True):
        with_outcome = known[known["site"] == site]
        without = len(rows) - len(with_outcome)
        if with_outcome.empty and without:
            km.plot([], [], " ", label=f"{site} (n={len(rows)}): no outcome, to predict")
        if len(with_outcome) < 2:
            continue
        months = with_outcome["time_days"].to_numpy(dtype=float) / (365.25 / 12)
        event = with_outcome["event"].to_numpy(dtype=int) == 1
        t, s, (lo, hi) = kaplan_meier_estimator(event, months, conf_type="log-log")
        note = f", {without} without outcome" if without else ""
        line = km.step(t, s, where="post", label=f"{site} (n={len(with_outcome)}, {event.sum()} deaths{note})")[0]
        km.fill_between(t, lo, hi, step="post", alpha=0.15, color=line.get_color())
    km.set(xlabel="months since start", ylabel="overall survival", ylim=(0, 1.02),
           title="Kaplan-Meier by site (95% CI)")
    if km.get_lines():
        km.legend(fontsize=8)
    km.grid(alpha=0.3)


def _plot_sites(bars: Axes, cohort: pd.DataFrame) -> None:
    """Stacked bars per site: deaths, censored and (where any) patients without an outcome."""
    sites = sorted(cohort["site"].unique()) if len(cohort) else []
    known = has_outcome(cohort).to_numpy(dtype=bool)
    in_site = [(cohort["site"] == s).to_numpy(dtype=bool) for s in sites]
    events = [int(cohort.loc[m & known, "event"].astype(int).sum()) for m in in_site]
    censored = [int((m & known).sum()) - e for m, e in zip(in_site, events, strict=True)]
    unknown = [int((m & ~known).sum()) for m in in_site]
    x = np.arange(len(sites))
    bars.bar(x, events, label="deaths", color="#c44e52")
    bars.bar(x, censored, bottom=events, label="censored", color="#8c8c8c")
    if any(unknown):
        bars.bar(x, unknown, bottom=np.add(events, censored), label="no outcome (to predict)", color="#9ecae1")
    bars.set_xticks(x, sites)
    bars.set(title="Patients per site", ylabel="patients")
    bars.legend(fontsize=8)
