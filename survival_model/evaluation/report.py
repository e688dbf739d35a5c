"""The evaluation report: a self-contained HTML page and a short Markdown summary per pipeline run.

Sections: the comparison (every model x every score with its interval, the difference to the GPA, the
mean ± SD over the cross-validation folds), Kaplan-Meier curves by predicted risk group (quantile
thresholds fixed on the development patients' out-of-fold risks, as many groups as their deaths allow,
applied to the test patients; log-rank test), calibration at 6 and 12 months, predicted against observed
time (uncensored patients only), per-site C-index, the learning curves, permutation importance and Grad-CAM,
and a leakage audit:

- split integrity: no patient in two sets, folds disjoint and covering the development set, and no
  test patient whose imaging measurements duplicate a development patient's (one patient under two ids);
- what was fitted on which rows;
- warnings when a result looks implausible (C-index above ``audit_max_cindex``, R2 on days above
  ``audit_max_r2``), when a model does not beat the GPA ("not shown better than" when the paired difference's
  interval includes 0, "worse than" only when it lies below 0, and an undefined difference or interval said
  as such), and when the test set is small.

Figures are PNG files beside the report and embedded in the HTML (base64), so the one file opens
anywhere (an MLflow artifact, an e-mail).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from survival_model.config import SEQUENCES, EvaluationParams
from survival_model.evaluation import plots
from survival_model.evaluation.oof import groups_for, horizons_inside
from survival_model.evaluation.scores import (
    DAYS_PER_MONTH,
    Outcome,
    TestCurves,
    breslow_hazard,
    calibration,
    survival_from,
)
from survival_model.evaluation.stage import finite, format_interval, level, rows
from survival_model.imageio import write_json, write_text
from survival_model.metrics import format_ci
from survival_model.training.splits import Splits


@dataclass(frozen=True)
class Finding:
    """One audit finding: ``level`` is "warning" or "note"."""

    level: str
    text: str


def absent_sequences(table: pd.DataFrame) -> dict[str, list[str]]:
    """Per site, the sequences none of its patients has: every ``int_*_<seq>_*`` / ``rad_*_<seq>_*`` feature of
    the sequence NaN for the whole site (a site that does not declare it). Sites missing none are left out."""
    out: dict[str, list[str]] = {}
    for site, rows_of_site in table.groupby(table["site"].astype(str), sort=True):
        lacking: list[str] = []
        for seq in SEQUENCES:
            columns = [c for c in table.columns if c.startswith(("int_", "rad_")) and f"_{seq}_" in c]
            if columns and rows_of_site[columns].isna().all().all():
                lacking.append(seq)
        if lacking:
            out[str(site)] = lacking
    return out


def sequence_findings(table: pd.DataFrame) -> list[Finding]:
    """A note naming the sites without some sequence, and what the pipeline did with it."""
    lacking = absent_sequences(table)
    if not lacking:
        return []
    sites = "; ".join(f"{site}: {', '.join(seqs)}" for site, seqs in lacking.items())
    everywhere = [s for s in SEQUENCES if all(s in lacking.get(str(site), []) for site in table["site"].unique())]
    text = (f"sequences absent for a whole site ({sites}): their intensity and radiomics features are NaN there "
            "(imputed inside each fold, with a missing-value indicator that is a site indicator; ComBat estimates "
            "their site effects among the sites that have them) and their image channels are zeros")
    if everywhere:
        text += f"; {', '.join(everywhere)} absent for every patient: no model can use them"
    return [Finding("note", text)]


def split_integrity(splits: Splits, table: pd.DataFrame) -> tuple[list[str], list[Finding]]:
    """Checks that passed (text) and findings (warnings) about the splits."""
    checks, found = [], []
    dev, test = set(splits.development), set(splits.test)
    both = dev & test
    (found.append(Finding("warning", f"{len(both)} patient(s) in both the development and the test set"))
     if both else checks.append(f"no patient in both sets ({len(dev)} development, {len(test)} test)"))
    validation = [set(f.validation) for f in splits.folds]
    overlap = sum(len(a & b) for i, a in enumerate(validation) for b in validation[i + 1:])
    covered = set().union(*validation) if validation else set()
    leaks = [f.name for f in splits.folds
             if set(f.train) & set(f.validation) or (set(f.train) | set(f.validation)) & test]
    if overlap or covered != dev or leaks:
        found.append(Finding("warning", f"folds: {overlap} patient(s) in two validation folds, "
                                         f"{len(dev ^ covered)} development patient(s) not validated exactly once, "
                                         f"folds mixing sets: {leaks or 'none'}"))
    else:
        checks.append(f"{len(splits.folds)} folds: validation folds disjoint and covering the development set; "
                      "no fold trains on its validation or on test patients")
    ids = table["case_id"].astype(str)
    if ids.duplicated().any():
        found.append(Finding("warning", f"{int(ids.duplicated().sum())} duplicated case id(s) in the feature table"))
    measures = [c for c in table.columns if str(c).startswith("vol_")]
    if measures:
        indexed = table.set_index(ids)[measures].round(6)
        dev_keys = {tuple(r) for r in indexed.loc[indexed.index.isin(dev)].itertuples(index=False)}
        twins = [c for c, r in zip(indexed.index, indexed.itertuples(index=False), strict=True)
                 if c in test and tuple(r) in dev_keys]
        (found.append(Finding("warning", f"{len(twins)} test patient(s) with imaging measurements identical to a "
                                          f"development patient's (the same patient under two ids?), e.g. {twins[0]}"))
         if twins else checks.append(f"no test patient duplicates a development patient's {len(measures)} "
                                     "volumetric measurements"))
    return checks, found


def fitted_rows(splits: Splits, baselines: Sequence[str], network: str, test_set_decisions: int | None) -> pd.DataFrame:
    """What was fitted, and chosen, on which patients."""
    n_dev, n_test = len(splits.development), len(splits.test)
    folds = ", ".join(f"{f.name}: {len(f.train) - len(f.stop)}/{len(f.stop)}/{len(f.validation)}" for f in splits.folds)
    used = ("never used to fit or choose a model in this evaluation" if not test_set_decisions else
            f"never used to fit or choose a model in this evaluation, but it has served {test_set_decisions} "
            "promotion-gate decision(s) before: a model chosen by the gate was chosen on it")
    rows = [
        (f"{network}: tabular pipeline (imputation, scaling, encoding) and weights",
         f"each fold's fitting patients (fitting/stopping/validation per fold: {folds})"),
        (f"{network}: tabular penalty and epoch kept",
         "each fold's stopping patients (inside its training set); its validation patients are scored once, "
         "by the model kept"),
        (f"{network}: the final model", "not fitted: the mean of the fold models' outputs, each centred on its "
                                        "fold's training patients"),
        ("Breslow baseline hazard of the test curves (Brier, calibration, predicted days of risk scores)",
         f"development patients ({n_dev}); a network's from its out-of-fold risks"),
        ("out-of-fold calibration and integrated Brier score",
         "each patient's curve from a Breslow baseline on the other folds' out-of-fold risks"),
        *((f"baseline {b}", "nothing fitted" if b in ("gpa", "ds_gpa") else
           f"development patients ({n_dev}); out of fold: each fold's training patients" +
           ("; its penalty by 3-fold CV inside them" if b.startswith("coxnet") else ""))
          for b in baselines),
        ("risk-group thresholds of the Kaplan-Meier plots", f"the development patients' out-of-fold risks ({n_dev}); "
                                                             f"for {network} on the test set, {ENSEMBLE_THRESHOLDS}"),
        ("locked test set", f"{n_test} patients: scored once per evaluation, as confirmation; {used}"),
    ]
    return pd.DataFrame(rows, columns=["what", "fitted on"])


def selection_findings(splits: Splits, fold_summaries: Sequence[dict[str, Any]],
                       key_fingerprint: str | None = None) -> tuple[list[str], list[Finding]]:
    """Whether any choice (epoch, penalty) was made on patients that were then scored, and whether the splits'
    ids were made with this run's pseudonym key (``key_fingerprint``)."""
    checks, found = [], []
    leaks = [f.name for f in splits.folds if set(f.stop) & (set(f.validation) | set(splits.test))
             or not set(f.stop) <= set(f.train)]
    unmarked = [str(s.get("fold", i)) for i, s in enumerate(fold_summaries) if "selection" not in s]
    recorded = min(len(fold_summaries) - len(unmarked), len(splits.folds))
    if leaks:
        found.append(Finding("warning", f"selection on scored patients: the stopping patients of {', '.join(leaks)} "
                                        "overlap its validation patients or the test set"))
    elif unmarked:
        found.append(Finding("warning", f"{len(unmarked)} fold model(s) do not record where their epoch was chosen "
                                        "(trained by an older version, which chose it on the validation fold): "
                                        "their cross-validated scores are selection-biased"))
    elif recorded < len(splits.folds):
        found.append(Finding("warning", f"no selection on scored patients not shown: {recorded} of "
                                        f"{len(splits.folds)} folds recorded how they selected (epoch, penalty)"))
    else:
        checks.append("no selection on scored patients: every fold chose its epoch and penalty on its own stopping "
                      "patients, disjoint from its validation patients and the test set")
    fingerprint = splits.pseudonym_key_fingerprint
    if fingerprint and key_fingerprint and fingerprint != key_fingerprint:
        found.append(Finding("warning", f"key mismatch: the splits list ids made with the pseudonym key of "
                                        f"fingerprint {fingerprint}, this run's key is {key_fingerprint}"))
    elif fingerprint:
        checks.append(f"case ids pseudonymised with the key of fingerprint {fingerprint} (the splits' membership does "
                      "not depend on it; a champion trained under another key stops the promotion gate)")
    return checks, found


#: How an undefined interval of a paired difference reads (``paired.MIN_FINITE`` of the draws were not finite).
UNDEFINED_INTERVAL = "undefined interval (too few resamples where both scores are defined)"


def computed(row: pd.Series, column: str) -> bool:
    """Whether the paired difference ``column`` was computed for this row: its ``_resamples`` count is there (the
    reference's own row has none); in a table without the count, whether the value is finite."""
    count = row.get(f"{column}_resamples")
    return finite(count) if count is not None else finite(row.get(column))


def _interval(row: pd.Series, column: str) -> tuple[float, float, float]:
    """``column`` and its interval in ``row`` (NaN where absent)."""
    def value(key: str) -> float:
        found = row.get(key)
        return float(found) if found is not None else float("nan")

    return value(column), value(f"{column}_low"), value(f"{column}_high")


def delta_text(row: pd.Series, column: str) -> str:
    """A paired difference as text: ``0.050 [-0.010, 0.110]``, or what is undefined about it."""
    value, low, high = _interval(row, column)
    if not np.isfinite(value):
        return "undefined (a score is undefined on these patients)"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.3f}, {UNDEFINED_INTERVAL}"
    return format_ci(value, low, high)


def versus(name: str, label: str, row: pd.Series, column: str, where: str = "") -> Finding | None:
    """The note on ``name``'s paired ΔC to a reference (``label``): "worse than" only when the whole interval lies
    below 0, "not shown better than" when it includes 0, none when it lies above 0; an undefined difference or
    interval is said, never skipped. One rule for the out-of-fold and the locked test set's comparison."""
    if not computed(row, column):
        return None
    if not np.isfinite(_interval(row, column)).all():
        return Finding("note", f"{name}: ΔC vs {label}{where}: {delta_text(row, column)}")
    _, low, high = _interval(row, column)
    if low > 0:
        return None
    verdict = "worse than" if high < 0 else "not shown better than"
    return Finding("note", f"{name} is {verdict} {label}{where}: ΔC {delta_text(row, column)}")


def oof_warnings(oof: pd.DataFrame, evaluation: EvaluationParams) -> list[Finding]:
    """On the out-of-fold comparison: implausible C-indices, and every model not shown better than the GPA or the
    tabular-only network (:func:`versus`)."""
    out = []
    for name, row in oof.iterrows():
        if name == "oracle":
            continue
        value = row.get("harrell_c")
        if value is not None and np.isfinite(value) and value > evaluation.audit_max_cindex:
            out.append(Finding("warning", f"{name}: out-of-fold C-index {value:.3f} > {evaluation.audit_max_cindex} "
                                          "is implausible for survival in brain metastases: check for leakage"))
        for role, label in (("gpa", "the GPA"), ("tabular", "the tabular-only network")):
            finding = versus(str(name), label, row, f"vs_{role}_harrell_c", " out of fold")
            out += [finding] if finding else []
    return out


def result_warnings(comparison: pd.DataFrame, evaluation: EvaluationParams, test: Outcome) -> list[Finding]:
    """Implausible results, models not beating the GPA, a small test set."""
    out = []
    for name, row in comparison.iterrows():
        if name == "oracle":
            continue
        for metric in ("harrell_c", "uno_c"):
            value = row.get(metric)
            if value is not None and np.isfinite(value) and value > evaluation.audit_max_cindex:
                out.append(Finding("warning", f"{name}: {metric} {value:.3f} > {evaluation.audit_max_cindex} is "
                                               "implausible for survival in brain metastases: check for leakage"))
        r2 = row.get("r2_uncensored")
        if r2 is not None and np.isfinite(r2) and r2 > evaluation.audit_max_r2:
            out.append(Finding("warning", f"{name}: R2 on days {r2:.3f} > {evaluation.audit_max_r2} is implausible: "
                                           "check for leakage (e.g. an outcome-derived input)"))
        finding = versus(str(name), "the GPA", row, "delta_harrell_c")
        out += [finding] if finding else []
    for months in (6, 12, 24):
        controls = int((test.time > months * DAYS_PER_MONTH).sum())
        if controls == 0:
            out.append(Finding("note", f"AUC at {months} months: no test patient is known to be alive beyond "
                                       f"{months} months; that AUC is undefined"))
        elif controls < 10:
            out.append(Finding("note", f"AUC at {months} months: only {controls} test patient(s) known to be alive "
                                       f"beyond {months} months; that AUC rests on them"))
    patients, deaths = len(test.time), int(test.event.sum())
    if patients < evaluation.audit_min_test_patients or deaths < evaluation.audit_min_test_deaths:
        out.append(Finding("note", f"small test set ({patients} patients, {deaths} deaths): intervals are wide and "
                                    "differences between models are rarely significant"))
    return out


#: The caveat of the locked test set's risk groups of a fold ensemble (the report's caption).
ENSEMBLE_THRESHOLDS = (
    "the thresholds are quantiles of single fold models' out-of-fold risks, applied to the ensemble's risks (the "
    "mean of the fold models'), which spread less than one model's: the outer groups hold fewer test patients than "
    "their development share, so compare the groups' curves, not their sizes")
#: How the groups of the risk-group and calibration figures are numbered.
GROUP_NUMBERS = "groups numbered from 0 = the lowest predicted risk (the highest predicted survival)"


@dataclass(frozen=True)
class ReportData:
    """What the report draws beyond the comparison tables: every model's out-of-fold risks on the development
    patients (``model, case_id, fold, risk``), the cross-fitted calibration tables of those risks, and the
    main network's fold models' risks on the test patients (columns ``risk_<fold>``: the ensemble's survival
    curve is the mixture of theirs)."""

    oof_risks: pd.DataFrame
    oof_calibration: pd.DataFrame
    test_members: pd.DataFrame | None


def figures(table: pd.DataFrame, splits: Splits, risks: pd.DataFrame, per_site: pd.DataFrame, network: str,
            data: ReportData, folder: Path, horizons_months: Sequence[float] = (6, 12)) -> dict[str, Any]:
    """The report's own figures (PNG in ``folder``) and the log-rank results per model and patient set.

    Risk groups and calibration are shown first where there are patients to show them, on the out-of-fold
    predictions of the development patients (as many groups as their deaths allow; quantiles of those risks),
    and then on the locked test set as confirmation (the development thresholds applied to the ensemble: see
    :data:`ENSEMBLE_THRESHOLDS` for why its groups' sizes are not the development shares). Groups are numbered
    from 0 = the lowest predicted risk, by ``plots.risk_groups`` and ``scores.calibration`` alike; a calibration
    plot is drawn only at a horizon that has a calibration table (one inside the follow-up)."""
    folder.mkdir(parents=True, exist_ok=True)
    dev_out, test_out = Outcome.of_frame(rows(table, splits.development)), Outcome.of_frame(rows(table, splits.test))
    out: dict[str, Any] = {"logrank": {}, "logrank_test": {}}
    oof = data.oof_risks.pivot(index="case_id", columns="model", values="risk")

    def test_part(name: str) -> tuple[np.ndarray, np.ndarray | None]:
        part = risks[(risks["model"] == name) & (risks["set"] == "test")].set_index("case_id").loc[list(splits.test)]
        days = part["predicted_days"].to_numpy(dtype=float)
        return part["risk"].to_numpy(dtype=float), (days if np.isfinite(days).any() else None)

    dev_groups, test_groups = groups_for(int(dev_out.event.sum())), groups_for(int(test_out.event.sum()))
    for name in [network, *(m for m in ("gpa", "oracle") if m in oof.columns)]:
        if name not in oof.columns:
            continue
        dev_risk = oof[name].reindex(list(splits.development)).to_numpy(dtype=float)
        out["logrank"][name] = plots.km_by_risk_group(
            dev_risk, dev_risk, dev_out.time, dev_out.event, folder / f"km_{_slug(name)}.png",
            f"{name}: development patients (out of fold) by predicted risk", groups=dev_groups)
        out["logrank_test"][name] = plots.km_by_risk_group(
            dev_risk, test_part(name)[0], test_out.time, test_out.event, folder / f"km_test_{_slug(name)}.png",
            f"{name}: locked test patients by predicted risk", groups=test_groups)
    own = data.oof_calibration[data.oof_calibration["model"] == network] if len(data.oof_calibration) else None
    out["calibration"] = []
    for months in horizons_months:
        part = own[own["months"] == months] if own is not None and len(own) else None
        if part is not None and len(part):  # no table at a horizon outside the follow-up: no empty plot
            plots.calibration_plot(part, folder / f"calibration_dev_{months:g}m.png", months)
            out["calibration"].append(("dev", months))
    if network in oof.columns:
        test_risk, own_days = test_part(network)
        dev_risk = oof[network].reindex(list(splits.development)).to_numpy(dtype=float)
        members = data.test_members.reindex(list(splits.test)).to_numpy(dtype=float) \
            if data.test_members is not None else None
        for months in horizons_inside(test_out, horizons_months):
            hazard = breslow_hazard(dev_risk, dev_out, np.array([months * DAYS_PER_MONTH]))
            curve = survival_from(hazard, members if members is not None else test_risk)[:, 0]
            plots.calibration_plot(calibration(test_out, curve, months * DAYS_PER_MONTH, test_groups),
                                   folder / f"calibration_test_{months:g}m.png", months)
            out["calibration"].append(("test", months))
        curves = TestCurves.of(dev_risk, dev_out, test_risk, test_out, test_days=own_days, members=members)
        plots.predicted_vs_observed(curves.medians, test_out.time, test_out.event, folder / "predicted_vs_observed.png")
    plots.per_site_bars(per_site, folder / "per_site.png")
    return out


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p><em>{html.escape(alt)}: not available</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(alt)}</figcaption></figure>"


def comparison_display(comparison: pd.DataFrame, cv: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """Model x score as "value [low, high]" strings, and the CV mean ± SD columns."""
    metrics = [c for c in comparison.columns
               if not c.endswith(("_low", "_high", "_resamples")) and c != "patients_uncensored"]
    out = pd.DataFrame(index=comparison.index)
    for metric in metrics:
        out[metric] = [format_interval(r.get(metric), r.get(f"{metric}_low"), r.get(f"{metric}_high"))
                       for _, r in comparison.iterrows()]
    for metric in ("harrell_c", "uno_c", "integrated_brier", "auc_12m"):
        out[f"CV {metric}"] = [f"{cv[m][metric]['mean']:.3f} ± {cv[m][metric]['sd']:.3f}"
                               if metric in cv.get(str(m), {}) else "-" for m in comparison.index]
    return out


def _model_of(importance: pd.DataFrame) -> str:
    return str(importance["model"].iloc[0]) if "model" in importance.columns and len(importance) else "model"


def importance_markdown(importance: pd.DataFrame, known_effects: Sequence[str]) -> list[str]:
    """Top 5 of one model's ranking, and where the ground truth's known effects land."""
    name = _model_of(importance)
    top = ", ".join(f"{r.feature} ({r.mean:+.3f})" for r in importance.head(5).itertuples())
    lines = [f"- **{name}**: top 5 {top}."]
    ranks = importance.set_index("feature")["rank"]
    if any(f in ranks.index for f in known_effects):
        placed = ", ".join(f"{f} {int(ranks[f])}" if f in ranks.index else f"{f} (not an input)" for f in known_effects)
        lines.append(f"  Known effects of the ground truth, rank of {len(importance)}: {placed}.")
    return lines


def _row(frame: pd.DataFrame, name: str) -> pd.Series:
    row = frame.loc[name]
    return row if isinstance(row, pd.Series) else row.iloc[0]


def summary_markdown(network: str, comparison: pd.DataFrame, oof: pd.DataFrame, table_md: str,
                     audit: Sequence[Finding], importances: Sequence[pd.DataFrame], cams: pd.DataFrame | None,
                     known_effects: Sequence[str]) -> str:
    """The short summary (Prefect UI, MLflow, the CLI)."""
    lines = ["# Evaluation", ""]
    if network in oof.index:
        row = _row(oof, network)
        parts = [f"Harrell's C {format_interval(row['harrell_c'], row['harrell_c_low'], row['harrell_c_high'])}"]
        for role, label in (("tabular", "tabular-only"), ("gpa", "GPA"), ("oracle", "oracle")):
            column = f"vs_{role}_harrell_c"
            if column in row.index and computed(row, column):
                parts.append(f"vs {label} {delta_text(row, column)}")
        if "headroom" in row.index and np.isfinite(row["headroom"]):
            headroom = format_interval(row["headroom"], row["headroom_low"], row["headroom_high"])
            parts.append(f"share of the oracle's headroom {headroom}")
        lines += [f"**{network}, out of fold on the development patients**: " + "; ".join(parts) + ".", ""]
    if network in comparison.index and "gpa" in comparison.index:
        row = _row(comparison, network)
        c = format_interval(row["harrell_c"], row["harrell_c_low"], row["harrell_c_high"])
        delta = delta_text(row, "delta_harrell_c") if computed(row, "delta_harrell_c") else "-"
        c_index = comparison["harrell_c"].astype(float)
        ceiling = f"; oracle (ceiling) {c_index['oracle']:.3f}" if "oracle" in c_index.index else ""
        lines += [f"Locked test set (confirmation): Harrell's C {c}; GPA {c_index['gpa']:.3f}; difference to the GPA "
                  f"{delta}{ceiling}.", ""]
    lines += [table_md, "## Audit", ""]
    lines += [f"- **{w.level}**: {w.text}" for w in audit] or ["- no warning"]
    if importances:
        lines += ["", "## Permutation importance (drop in Harrell's C when an input is shuffled)", ""]
        for importance in importances:
            lines += importance_markdown(importance, known_effects)
    if cams is not None and len(cams):
        ratio = cams["cam_share_tumour_edema"] / cams["area_share_tumour_edema"]
        lines += ["", "## Grad-CAM", "",
                  f"CAM energy inside tumour + edema: median {cams['cam_share_tumour_edema'].median():.2f} of the "
                  f"brain's, for a median area share of {cams['area_share_tumour_edema'].median():.2f} (energy / area "
                  f"above 1 in {int((ratio > 1).sum())} of {len(cams)} test patients)."]
    return "\n".join(lines) + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}img{max-width:100%}
.warning{color:#a40000}.note{color:#7a5c00}"""


def html_report(title: str, sections: Sequence[tuple[str, str]]) -> str:
    body = "\n".join(f"<section><h2>{html.escape(name)}</h2>\n{content}</section>" for name, content in sections)
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}</body></html>\n"


def audit_html(checks: Sequence[str], found: Sequence[Finding], fitted: pd.DataFrame) -> str:
    items = [f"<li>✓ {html.escape(c)}</li>" for c in checks]
    items += [f"<li class='{w.level}'>{w.level}: {html.escape(w.text)}</li>" for w in found]
    return f"<ul>{''.join(items)}</ul><h3>What was fitted on which rows</h3>{fitted.to_html(index=False)}"


def write_report(folder: Path, *, table: pd.DataFrame, splits: Splits, comparison: pd.DataFrame,
                 per_site: pd.DataFrame, cv: dict[str, dict[str, dict[str, float]]], risks: pd.DataFrame,
                 oof: pd.DataFrame, data: ReportData, table_md: str, network: str, baselines: Sequence[str],
                 evaluation: EvaluationParams, learning_curves: Path | None, explanation: Path | None,
                 known_effects: Sequence[str], fold_summaries: Sequence[dict[str, Any]] = (),
                 test_set_decisions: int | None = None, key_fingerprint: str | None = None,
                 title: str = "Brain metastases survival: evaluation report") -> Path:
    """Write ``folder`` (figures, ``report.html``, ``summary.md``, ``audit.json``) and return the HTML path.
    ``test_set_decisions``: how many promotion-gate decisions the locked test set served before (the
    registry's record; None when there is no registry)."""
    figs = folder / "figures"
    drawn = figures(table, splits, risks, per_site, network, data, figs)
    test = Outcome.of_frame(rows(table, splits.test))
    checks, found = split_integrity(splits, table)
    selected, selection = selection_findings(splits, fold_summaries, key_fingerprint)
    checks += selected
    found += selection + oof_warnings(oof, evaluation) + result_warnings(comparison, evaluation, test)
    found += sequence_findings(table)
    if test_set_decisions:
        found.append(Finding("note", f"the locked test set has served {test_set_decisions} promotion-gate "
                                     "decision(s) before this evaluation: its scores of a model the gate chose there "
                                     "are optimistic; compare models out of fold, and let new patients refresh it"))
    fitted = fitted_rows(splits, baselines, network, test_set_decisions)
    cams = None
    importance_folders = [] if explanation is None else \
        [explanation, *sorted((explanation / "models").glob("*"), key=lambda p: int(p.name) if p.name.isdigit() else 0)]
    importance_folders = [f for f in importance_folders if (f / "importance.csv").is_file()]
    importances = [pd.read_csv(f / "importance.csv") for f in importance_folders]
    if explanation is not None and (explanation / "gradcam.csv").is_file():
        cams = pd.read_csv(explanation / "gradcam.csv")

    def logrank(results: dict[str, Any]) -> str:
        return "".join(f"<li>{html.escape(m)}: log-rank χ² {r['chi2']:.2f}, p = {r['p_value']:.3g}; group sizes "
                       f"{r['counts']}</li>" for m, r in results.items())

    dev_deaths = int(Outcome.of_frame(rows(table, splits.development)).event.sum())
    ci = level(evaluation.confidence)
    where = {"dev": "development (out of fold)", "test": "test set"}
    sections = [
        ("Summary", f"<p>{len(splits.development)} development patients ({dev_deaths} deaths) in "
                    f"{len(splits.folds)} folds; {len(splits.test)} locked test patients "
                    f"({int(test.event.sum())} deaths).</p>"),
        ("Comparison out of fold (all development patients)", comparison_display(oof, {}).to_html()
         + f"<p>Each development patient scored by the model of the fold that validated it. {ci} bootstrap intervals "
           "over patients; vs_*: paired difference to the oracle, the tabular-only network and the GPA on the same "
           "resamples; headroom: (C − 0.5) / (C_oracle − 0.5).</p>"),
        ("Confirmation on the locked test set", comparison_display(comparison, cv).to_html()
         + f"<p>Values with {ci} bootstrap intervals over the test patients; Δ: paired difference to the GPA; CV: "
           "mean ± SD over the development folds' validation patients; *_uncensored: the paper's metrics on patients "
           "who died.</p>"),
        ("Kaplan-Meier by predicted risk group",
         "<p>Development patients, out of fold (groups: quantiles of these risks, as many as the deaths allow):</p>"
         f"<ul>{logrank(drawn['logrank'])}</ul>"
         + "".join(_img(figs / f"km_{_slug(m)}.png", f"Kaplan-Meier, development (out of fold): {m}")
                   for m in drawn["logrank"])
         + f"<p>Locked test patients (the development thresholds applied; for {html.escape(network)}, "
           f"{ENSEMBLE_THRESHOLDS}):</p>"
         f"<ul>{logrank(drawn['logrank_test'])}</ul>"
         + "".join(_img(figs / f"km_test_{_slug(m)}.png", f"Kaplan-Meier, locked test set: {m}"
                        + (f" ({ENSEMBLE_THRESHOLDS})" if m == network else ""))
                   for m in drawn["logrank_test"])),
        (f"Calibration and predicted time ({network})",
         "".join(_img(figs / f"calibration_{part}_{months:g}m.png",
                      f"calibration at {months:g} months, {where[part]} ({GROUP_NUMBERS})")
                 for part, months in drawn["calibration"])
         + _img(figs / "predicted_vs_observed.png", "predicted vs observed days (uncensored test patients)")),
        ("Per site", per_site.round(3).to_html() + _img(figs / "per_site.png", "Harrell's C per site")),
        ("Learning curves", _img(learning_curves, "learning curves per fold") if learning_curves else "<p>-</p>"),
    ]
    if importances:
        sections.append(("Permutation importance", "<p>Drop in Harrell's C on the test patients when one input is "
                         "shuffled (a tabular column; or an image channel, i.e. one sequence, in every slice), mean "
                         "± SD over the repeats. Negative values: shuffling did not hurt (noise).</p>" + "".join(
                             _img(f / "importance.png", f"permutation importance: {_model_of(t)}")
                             + t.round(4).to_html(index=False) for f, t in zip(importance_folders, importances,
                                                                              strict=True))))
    if cams is not None:
        sections.append(("Grad-CAM", _img(explanation / "gradcam.png", "Grad-CAM on T1c and FLAIR")  # type: ignore[operator]
                         + f"<p>CAM energy share inside tumour + edema: median "
                           f"{cams['cam_share_tumour_edema'].median():.2f}, area share median "
                           f"{cams['area_share_tumour_edema'].median():.2f}.</p>" + cams.round(3).to_html(index=False)))
    sections.append(("Leakage audit", audit_html(checks, found, fitted)))
    folder.mkdir(parents=True, exist_ok=True)
    write_json({"checks": checks, "findings": [w.__dict__ for w in found], "logrank": drawn["logrank"],
                "logrank_test": drawn["logrank_test"], "test_set_decisions": test_set_decisions},
               folder / "audit.json")
    write_text(summary_markdown(network, comparison, oof, table_md, found, importances, cams, known_effects),
               folder / "summary.md")
    path = folder / "report.html"
    write_text(html_report(title, sections), path)
    return path
