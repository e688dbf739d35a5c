"""The report's figures: pure functions from arrays / DataFrames to one PNG each (path returned).

Figures are drawn with matplotlib's object API (a ``Figure`` on its own ``FigureCanvasAgg``), never
pyplot's global state, so they are safe in worker threads and leave no open figures behind. The
statistics come from scikit-survival (Kaplan-Meier: ``kaplan_meier_estimator``; log-rank test:
``compare_survival``) and from :mod:`survival_model.evaluation.scores`. An empty input gives a figure
that says "no data" rather than an error.

- :func:`risk_groups`: risk-group thresholds from the *training* risks, applied to the test risks;
- :func:`km_by_risk_group`: Kaplan-Meier curves of the test patients per predicted risk group, log-rank p;
- :func:`calibration_plot`: predicted against Kaplan-Meier survival at one time (``scores.calibration``);
- :func:`predicted_vs_observed`: predicted against observed survival time, uncensored patients only;
- :func:`importance_bar`: a ranked feature-importance table (mean ± sd), coloured by kind;
- :func:`per_site_bars`: Harrell's C of each model at each site;
- :func:`gradcam_panel`: Grad-CAM maps over T1c and FLAIR with the tumour regions outlined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sksurv.compare import compare_survival
from sksurv.nonparametric import kaplan_meier_estimator

from survival_model.evaluation.scores import DAYS_PER_MONTH, FloatArray, Outcome

DPI = 110
MAX_GRADCAM_ROWS = 8
RISK_LABELS = {2: ("low", "high"), 3: ("low", "intermediate", "high")}
REGION_COLOURS = ("white", "cyan", "magenta", "lime", "yellow")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="tight")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    fig.clear()  # not registered with pyplot: clearing releases the artists
    return path


def _no_data(path: Path, title: str, message: str = "no data") -> Path:
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=12)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="grey", transform=ax.transAxes)
    return _save(fig, path)


def _group_label(g: int, groups: int) -> str:
    names = RISK_LABELS.get(groups)
    return f"{names[g]} risk" if names else f"risk group {g} of 0-{groups - 1} (0 = lowest)"


def risk_groups(train_risk: FloatArray, risk: FloatArray,
                groups: int = 3) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """Quantile thresholds (``groups - 1`` of them, tertiles by default) of the **training** risks and
    each test patient's group: 0 = lowest risk, ``groups - 1`` = highest; a risk equal to a threshold goes
    to the higher group. Without finite training risks the thresholds are NaN, and a patient without a
    finite risk (or without thresholds) gets group -1 (unassigned)."""
    if groups < 1:
        raise ValueError(f"groups must be at least 1, got {groups}")
    train = np.asarray(train_risk, dtype=float).ravel()
    train = train[np.isfinite(train)]
    test = np.asarray(risk, dtype=float).ravel()
    probabilities = np.linspace(0, 1, groups + 1)[1:-1]
    if not len(train):
        return np.full(groups - 1, np.nan), np.full(len(test), -1, dtype=np.intp)
    thresholds = np.asarray(np.quantile(train, probabilities), dtype=float)
    index = np.searchsorted(thresholds, test, side="right").astype(np.intp)
    return thresholds, np.where(np.isfinite(test), index, -1).astype(np.intp)


def _step_at(km_time: FloatArray, km_surv: FloatArray, at: FloatArray) -> FloatArray:
    position = np.searchsorted(km_time, at, side="right") - 1
    return np.where(position >= 0, km_surv[np.clip(position, 0, None)], 1.0)


def km_by_risk_group(train_risk: FloatArray, risk: FloatArray, time: FloatArray,
                     event: npt.NDArray[np.bool_] | Sequence[bool], path: Path, title: str,
                     groups: int = 3) -> dict[str, Any]:
    """Kaplan-Meier curves of patients per predicted risk group (quantiles of the reference risks
    ``train_risk``, :func:`risk_groups`), censoring ticked, time in months, with the log-rank test across the
    groups (``compare_survival``). Returns ``{"thresholds", "chi2", "p_value", "counts"}``; chi2 and p are NaN
    with fewer than two non-empty groups (or when the test cannot be computed)."""
    outcome = Outcome.of(time, event)
    thresholds, index = risk_groups(train_risk, np.asarray(risk, dtype=float), groups)
    if len(index) != len(outcome.time):
        raise ValueError(f"risk and time must have one length, got {len(index)} and {len(outcome.time)}")
    counts = [int((index == g).sum()) for g in range(groups)]
    result: dict[str, Any] = {"thresholds": [float(t) for t in thresholds], "chi2": float("nan"),
                              "p_value": float("nan"), "counts": counts}
    assigned = index >= 0
    if sum(c > 0 for c in counts) >= 2:
        try:
            with np.errstate(invalid="ignore", divide="ignore"):
                chi2, p_value = compare_survival(outcome.take(np.flatnonzero(assigned)).surv(), index[assigned])
            result["chi2"], result["p_value"] = float(chi2), float(p_value)
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError):
            pass
    if not assigned.any():
        _no_data(path, title)
        return result

    fig = _figure(7, 5)
    ax = fig.add_subplot()
    colours = [matplotlib.colormaps["RdYlGn_r"](x) for x in np.linspace(0.05, 0.95, groups)] if groups > 1 \
        else ["tab:blue"]
    for g in range(groups):
        part = outcome.take(np.flatnonzero(index == g))
        if not len(part.time):
            continue
        km_time, km_surv = kaplan_meier_estimator(part.event, part.time)
        months = np.concatenate([[0.0], km_time / DAYS_PER_MONTH])
        ax.step(months, np.concatenate([[1.0], km_surv]), where="post", color=colours[g], linewidth=1.8,
                label=f"{_group_label(g, groups)} (n={counts[g]})")
        censored = part.time[~part.event]
        ax.plot(censored / DAYS_PER_MONTH, _step_at(km_time, km_surv, censored), linestyle="none", marker="|",
                markersize=9, color=colours[g])
    p_value = result["p_value"]
    text = "log-rank p: n/a (fewer than 2 groups)" if not np.isfinite(p_value) else (
        f"log-rank p = {p_value:.2g}" if p_value >= 1e-4 else "log-rank p < 0.0001")
    if np.isfinite(p_value):
        text += f"  (χ² = {result['chi2']:.2f}, df = {sum(c > 0 for c in counts) - 1})"
    ax.text(0.98, 0.97, text, ha="right", va="top", fontsize=10, transform=ax.transAxes,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "lightgrey"})
    ax.set_ylim(0, 1.03)
    ax.set_xlim(left=0)
    ax.set_xlabel("months", fontsize=11)
    ax.set_ylabel("survival probability", fontsize=11)
    ax.set_title(f"{title}\n(groups: quantiles of the development patients' out-of-fold risks; |: censored)",
                 fontsize=11)
    ax.legend(loc="lower left", fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return result


def calibration_plot(table: pd.DataFrame, path: Path, t_months: float) -> Path:
    """Mean predicted S(t) against the Kaplan-Meier S(t) per risk group at ``t_months`` (``table``: the
    frame of :func:`scores.calibration`, columns ``group``, ``patients``, ``deaths``, ``predicted``,
    ``observed``; with ``observed_low`` / ``observed_high`` the KM 95% interval is drawn)."""
    title = f"calibration at {t_months:g} months"
    if table.empty or not {"predicted", "observed"} <= set(table.columns):
        return _no_data(path, title)
    rows = table[np.isfinite(table["predicted"].astype(float)) & np.isfinite(table["observed"].astype(float))]
    if rows.empty:
        return _no_data(path, title, "no data (follow-up too short for this time)")
    fig = _figure(5.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    predicted, observed = rows["predicted"].to_numpy(float), rows["observed"].to_numpy(float)
    if {"observed_low", "observed_high"} <= set(rows.columns):
        low, high = rows["observed_low"].to_numpy(float), rows["observed_high"].to_numpy(float)
        error = np.vstack([np.clip(observed - low, 0, None), np.clip(high - observed, 0, None)])
        ax.errorbar(predicted, observed, yerr=np.nan_to_num(error), fmt="o", color="tab:blue", capsize=4,
                    markersize=7, label="Kaplan-Meier (95% CI)")
    else:
        ax.plot(predicted, observed, "o", color="tab:blue", markersize=7, label="Kaplan-Meier")
    numbers = rows["group"].astype(int).tolist() if "group" in rows.columns else list(range(1, len(rows) + 1))
    legend_lines = []
    for number, x, y, (_, row) in zip(numbers, predicted, observed, rows.iterrows(), strict=True):
        ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(7, 4), fontsize=10)
        line = f"group {number}"
        if "patients" in rows.columns:
            line += f": n={int(row['patients'])}"
        if "deaths" in rows.columns:
            line += f", {int(row['deaths'])} deaths"
        legend_lines.append(line)
    ax.text(0.97, 0.03, "\n".join(legend_lines), ha="right", va="bottom", fontsize=9, transform=ax.transAxes,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "lightgrey"})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"predicted survival at {t_months:g} months", fontsize=11)
    ax.set_ylabel(f"observed (Kaplan-Meier) survival at {t_months:g} months", fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def predicted_vs_observed(predicted_days: FloatArray, time: FloatArray,
                          event: npt.NDArray[np.bool_] | Sequence[bool], path: Path) -> Path:
    """Predicted against observed survival (months) of the **uncensored** patients (a censored time is not
    a survival time), identity line; patients without a predicted time (NaN) are left out, with a note."""
    predicted = np.asarray(predicted_days, dtype=float).ravel()
    outcome = Outcome.of(time, event)
    if len(predicted) != len(outcome.time):
        raise ValueError(f"predictions and times must have one length, got {len(predicted)} and "
                         f"{len(outcome.time)}")
    dead = outcome.event
    keep = dead & np.isfinite(predicted)
    dropped = int((dead & ~np.isfinite(predicted)).sum())
    title = f"predicted vs observed survival, uncensored patients only (n={int(keep.sum())})"
    note = f"{int((~dead).sum())} censored patients left out"
    if dropped:
        note += f"\n{dropped} uncensored patients without a predicted time (NaN) dropped"
    if not keep.any():
        return _no_data(path, title, f"no data\n{note}")
    x, y = outcome.time[keep] / DAYS_PER_MONTH, predicted[keep] / DAYS_PER_MONTH
    fig = _figure(6, 6)
    ax = fig.add_subplot()
    top = float(max(x.max(), y.max())) * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="identity")
    ax.scatter(x, y, s=22, alpha=0.7, color="tab:blue", edgecolors="none", label="patients")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("observed survival (months)", fontsize=11)
    ax.set_ylabel("predicted survival (months)", fontsize=11)
    ax.set_title(f"{title}\n{note}", fontsize=10)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def importance_bar(table: pd.DataFrame, path: Path, top: int = 20,
                   xlabel: str = "drop in Harrell's C when shuffled (mean over repeats)",
                   subject: str = "") -> Path:
    """Horizontal bars of the ``top`` largest mean importances (columns ``feature``, ``kind``, ``mean``,
    ``sd``; error bars = sd), coloured by kind, the largest at the top."""
    title = f"{subject + ': ' if subject else ''}permutation importance (top {top}; error bars: SD)"
    if table.empty or not {"feature", "mean"} <= set(table.columns):
        return _no_data(path, title)
    rows = table[np.isfinite(table["mean"].astype(float))].sort_values("mean", ascending=False).head(top)
    if rows.empty:
        return _no_data(path, title)
    rows = rows.iloc[::-1]  # barh draws bottom-up: the largest last, at the top
    kinds = rows["kind"].astype(str) if "kind" in rows.columns else pd.Series("feature", index=rows.index)
    palette = {kind: f"C{i % 10}" for i, kind in enumerate(sorted(kinds.unique()))}
    sd = rows["sd"].astype(float).fillna(0).to_numpy() if "sd" in rows.columns else None
    fig = _figure(8, max(2.5, 0.35 * len(rows) + 1.2))
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    ax.barh(positions, rows["mean"].to_numpy(float), xerr=sd, color=[palette[k] for k in kinds],
            capsize=3, error_kw={"elinewidth": 1, "ecolor": "dimgrey"})
    ax.set_yticks(positions, [str(f) for f in rows["feature"]], fontsize=9)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_title(title, fontsize=12)
    handles = [Line2D([0], [0], color=colour, linewidth=8, label=kind) for kind, colour in palette.items()]
    ax.legend(handles=handles, loc="lower right", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def per_site_bars(per_site: pd.DataFrame, path: Path) -> Path:
    """Grouped bars of Harrell's C, one group per site (columns), one bar per model (rows), with the 0.5
    line of no information; a missing value (NaN) is marked "n/a"."""
    title = "Harrell's C per site"
    values = per_site.astype(float)
    if values.empty or not np.isfinite(values.to_numpy()).any():
        return _no_data(path, title)
    models, sites = [str(m) for m in values.index], [str(s) for s in values.columns]
    width = 0.8 / len(models)
    fig = _figure(max(6.0, 1.2 * len(sites) * max(1, len(models)) * 0.5 + 2), 4.5)
    ax = fig.add_subplot()
    centres = np.arange(len(sites))
    for i, model in enumerate(models):
        offsets = centres - 0.4 + width * (i + 0.5)
        heights = values.iloc[i].to_numpy()
        ax.bar(offsets, np.nan_to_num(heights), width=width, color=f"C{i % 10}", label=model)
        for x, h in zip(offsets, heights, strict=True):
            if not np.isfinite(h):
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=8, rotation=90, color="dimgrey")
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="0.5 (no information)")
    ax.set_xticks(centres, sites, fontsize=10)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Harrell's C", fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _overlay(ax: Axes, image: FloatArray, cam: FloatArray, regions: Mapping[str, npt.NDArray[np.bool_]],
             colours: Mapping[str, str], name: str) -> None:
    ax.imshow(image, cmap="gray")
    ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    for region, mask in reversed(list(regions.items())):  # the first-named region (e.g. the core) drawn on top
        outline = np.asarray(mask, dtype=bool)
        if outline.any() and not outline.all():
            ax.contour(outline.astype(float), levels=[0.5], colors=colours[region], linewidths=1.2)
    ax.set_title(name, fontsize=10)
    ax.set_axis_off()


def gradcam_panel(panels: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One row per patient (at most 8): Grad-CAM (``jet``) over T1c and over FLAIR with the tumour regions
    outlined; the row title gives the case id, the share of CAM energy inside tumour + edema and the share
    of the slice's area those regions cover. ``panels``: dicts with ``case_id``, ``t1c``, ``flair``,
    ``cam`` (2-D, in [0, 1]), ``regions`` (name -> 2-D bool mask), ``share`` and ``area_share``."""
    title = "Grad-CAM over T1c and FLAIR"
    rows = list(panels)[:MAX_GRADCAM_ROWS]
    if not rows:
        return _no_data(path, title)
    names = list(dict.fromkeys(name for panel in rows for name in panel.get("regions", {})))
    colours = {name: REGION_COLOURS[i % len(REGION_COLOURS)] for i, name in enumerate(names)}
    fig = Figure(figsize=(7, 3.6 * len(rows) + 0.8), layout="constrained")  # subfigures: constrained layout
    FigureCanvasAgg(fig)
    for row, panel in zip(fig.subfigures(len(rows), 1, squeeze=False).ravel(), rows, strict=True):
        cam = np.clip(np.asarray(panel["cam"], dtype=float), 0, 1)
        regions: Mapping[str, npt.NDArray[np.bool_]] = panel.get("regions", {})
        t1c_ax, flair_ax = row.subplots(1, 2)
        _overlay(t1c_ax, np.asarray(panel["t1c"], dtype=float), cam, regions, colours, "T1c + CAM")
        _overlay(flair_ax, np.asarray(panel["flair"], dtype=float), cam, regions, colours, "FLAIR + CAM")
        row.suptitle(f"{panel['case_id']}: CAM share in tumour+edema {float(panel['share']):.0%} "
                     f"(their area share {float(panel['area_share']):.0%})", fontsize=10)
    handles = [Line2D([0], [0], color=colour, linewidth=2, label=name) for name, colour in colours.items()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9,
                   facecolor="lightgrey")
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)
