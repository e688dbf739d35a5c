"""The evaluation report: a self-contained HTML page and a short Markdown summary per pipeline run.

Sections: the comparison (every model x every score with its interval, the difference to the GPA, the
mean ± SD over the cross-validation folds), Kaplan-Meier curves by predicted risk group (tertile
thresholds fixed on the development patients' risks, applied to the test patients; log-rank test),
calibration at 12 months, predicted against observed time (uncensored patients only), per-site C-index,
the learning curves, permutation importance and Grad-CAM, and a leakage audit:

- split integrity: no patient in two sets, folds disjoint and covering the development set, and no
  test patient whose imaging measurements duplicate a development patient's (one patient under two ids);
- what was fitted on which rows;
- warnings when a result looks implausible (C-index above ``audit_max_cindex``, R2 on days above
  ``audit_max_r2``), when a model does not beat the GPA (the paired difference's interval includes 0),
  and when the test set is small.

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

from survival_model.config import EvaluationParams
from survival_model.evaluation import plots
from survival_model.evaluation.metrics import format_ci
from survival_model.evaluation.scores import DAYS_PER_MONTH, Outcome, TestCurves, calibration
from survival_model.evaluation.stage import rows
from survival_model.training.splits import Splits


@dataclass(frozen=True)
class Finding:
    """One audit finding: ``level`` is "warning" or "note"."""

    level: str
    text: str


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


def fitted_rows(splits: Splits, baselines: Sequence[str], network: str) -> pd.DataFrame:
    """What was fitted on which patients."""
    n_dev, n_test = len(splits.development), len(splits.test)
    folds = ", ".join(f"{f.name}: {len(f.train)}/{len(f.validation)}" for f in splits.folds)
    rows = [
        (f"{network}: tabular pipeline (imputation, scaling, encoding) and weights",
         f"each fold's training rows; early stopping on its validation rows (train/validation {folds})"),
        (f"{network}: the final model", "not fitted: the mean of the fold models' outputs"),
        ("Breslow baseline hazard (survival curves, Brier, calibration, predicted days of risk scores)",
         f"development patients ({n_dev}); a network's from its out-of-fold risks"),
        *((f"baseline {b}", "nothing fitted" if b in ("gpa", "ds_gpa") else f"development patients ({n_dev})")
          for b in baselines),
        ("risk-group thresholds (tertiles) of the Kaplan-Meier plots", f"development patients' risks ({n_dev})"),
        ("locked test set", f"{n_test} patients: scored once, here; never used to fit or choose anything"),
    ]
    return pd.DataFrame(rows, columns=["what", "fitted on"])


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
        low = row.get("delta_harrell_c_low")
        if name not in ("gpa",) and low is not None and np.isfinite(low) and low <= 0:
            verdict = "worse than" if row["delta_harrell_c"] < 0 else "not shown better than"
            delta = format_ci(row["delta_harrell_c"], low, row["delta_harrell_c_high"])
            out.append(Finding("note", f"{name} is {verdict} the GPA: ΔC {delta}"))
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


def figures(table: pd.DataFrame, splits: Splits, risks: pd.DataFrame, per_site: pd.DataFrame, network: str,
            folder: Path) -> dict[str, Any]:
    """The report's own figures (PNG in ``folder``) and the log-rank results per model."""
    folder.mkdir(parents=True, exist_ok=True)
    dev_out, test_out = Outcome.of_frame(rows(table, splits.development)), Outcome.of_frame(rows(table, splits.test))
    out: dict[str, Any] = {"logrank": {}}

    def model_risks(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        part = risks[risks["model"] == name].set_index(["set", "case_id"])
        test_part = part.loc["test"].loc[list(splits.test)]
        days = test_part["predicted_days"].to_numpy(dtype=float)
        return (part.loc["development"].loc[list(splits.development)]["risk"].to_numpy(dtype=float),
                test_part["risk"].to_numpy(dtype=float), days if np.isfinite(days).any() else None)

    for name in [network, *(m for m in ("gpa", "oracle") if m in set(risks["model"]))]:
        train_risk, test_risk, _ = model_risks(name)
        out["logrank"][name] = plots.km_by_risk_group(
            train_risk, test_risk, test_out.time, test_out.event, folder / f"km_{_slug(name)}.png",
            f"{name}: test patients by predicted risk")
    train_risk, test_risk, own_days = model_risks(network)
    curves = TestCurves.of(train_risk, dev_out, test_risk, test_out, test_days=own_days)
    plots.calibration_plot(calibration(test_out, curves.survival_calibration, curves.calibration_days), folder /
                           "calibration.png", curves.calibration_days / DAYS_PER_MONTH)
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
    metrics = [c for c in comparison.columns if not c.endswith(("_low", "_high")) and c != "patients_uncensored"]
    out = pd.DataFrame(index=comparison.index)
    for metric in metrics:
        out[metric] = [format_ci(r.get(metric), r.get(f"{metric}_low"), r.get(f"{metric}_high"))
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


def summary_markdown(network: str, comparison: pd.DataFrame, table_md: str, audit: Sequence[Finding],
                     importances: Sequence[pd.DataFrame], cams: pd.DataFrame | None,
                     known_effects: Sequence[str]) -> str:
    """The short summary (Prefect UI, MLflow, the CLI)."""
    lines = ["# Evaluation on the locked test set", ""]
    if network in comparison.index and "gpa" in comparison.index:
        row = comparison.loc[network]
        c = format_ci(row["harrell_c"], row["harrell_c_low"], row["harrell_c_high"])
        delta = format_ci(row.get("delta_harrell_c"), row.get("delta_harrell_c_low"), row.get("delta_harrell_c_high"))
        c_index = comparison["harrell_c"].astype(float)
        gpa_c = c_index["gpa"]
        ceiling = f"; oracle (ceiling) {c_index['oracle']:.3f}" if "oracle" in c_index.index else ""
        lines.append(f"**{network}**: Harrell's C {c}; GPA {gpa_c:.3f}; difference to the GPA {delta}{ceiling}.")
        lines.append("")
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
                 table_md: str, network: str, baselines: Sequence[str], evaluation: EvaluationParams,
                 learning_curves: Path | None, explanation: Path | None, known_effects: Sequence[str],
                 title: str = "Brain metastases survival: evaluation report") -> Path:
    """Write ``folder`` (figures, ``report.html``, ``summary.md``, ``audit.json``) and return the HTML path."""
    from survival_model.imageio import write_json, write_text

    figs = folder / "figures"
    drawn = figures(table, splits, risks, per_site, network, figs)
    test = Outcome.of_frame(rows(table, splits.test))
    checks, found = split_integrity(splits, table)
    found += result_warnings(comparison, evaluation, test)
    fitted = fitted_rows(splits, baselines, network)
    cams = None
    importance_folders = [] if explanation is None else \
        [explanation, *sorted((explanation / "models").glob("*"), key=lambda p: int(p.name) if p.name.isdigit() else 0)]
    importance_folders = [f for f in importance_folders if (f / "importance.csv").is_file()]
    importances = [pd.read_csv(f / "importance.csv") for f in importance_folders]
    if explanation is not None and (explanation / "gradcam.csv").is_file():
        cams = pd.read_csv(explanation / "gradcam.csv")
    logrank = "".join(f"<li>{html.escape(m)}: log-rank χ² {r['chi2']:.2f}, p = {r['p_value']:.3g}; group sizes "
                      f"{r['counts']}</li>" for m, r in drawn["logrank"].items())
    sections = [
        ("Summary", f"<p>{len(splits.test)} locked test patients ({int(test.event.sum())} deaths), "
                    f"{len(splits.development)} development patients in {len(splits.folds)} folds.</p>"),
        ("Comparison on the locked test set", comparison_display(comparison, cv).to_html()
         + "<p>Values with 95% bootstrap intervals over the test patients; Δ: paired difference to the GPA; CV: "
           "mean ± SD over the development folds; *_uncensored: the paper's metrics on patients who died.</p>"),
        ("Kaplan-Meier by predicted risk group", f"<ul>{logrank}</ul>" + "".join(
            _img(figs / f"km_{_slug(m)}.png", f"Kaplan-Meier: {m}") for m in drawn["logrank"])),
        (f"Calibration and predicted time ({network})",
         _img(figs / "calibration.png", "calibration at 12 months")
         + _img(figs / "predicted_vs_observed.png", "predicted vs observed days (uncensored)")),
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
    write_json({"checks": checks, "findings": [w.__dict__ for w in found], "logrank": drawn["logrank"]},
               folder / "audit.json")
    write_text(summary_markdown(network, comparison, table_md, found, importances, cams, known_effects),
               folder / "summary.md")
    path = folder / "report.html"
    write_text(html_report(title, sections), path)
    return path
