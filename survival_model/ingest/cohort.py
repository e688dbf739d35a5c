"""Cohort assembly: join each site's image outcomes with its harmonised clinical rows.

Rules (each violation is a quarantine record; the rest of the cohort proceeds):

- images ingested and a clinical row present: the patient is in the cohort;
- images quarantined, or clinical row quarantined: quarantined with that reason (both if both);
- images but no clinical row: ``missing_clinical``; clinical row but no images: ``missing_images``;
- a site whose clinical table could not be used: all its patients ``clinical_table_error``;
- two image folders normalising to the same id: ``duplicate_id``;
- optionally (``ingest.check_lesion_count``) the clinical metastasis count must equal the mask's
  tumour components: ``lesion_count_mismatch``.

Outputs (:class:`AssembleCohort`, a content-keyed folder ``<work_dir>/ingest/cohort/<key[:16]>/``):
``cohort.parquet`` (DESIGN.md 3.2), ``quarantine.parquet``, ``summary.json`` and a data fingerprint that
depends on the data only (source file digests and clinical values), not on paths or code.
``summary.json`` also records ``pseudonym_key_fingerprint``, the fingerprint (never the value) of the
key the case ids were made with.

The whole ingestion stage (every case's :class:`~survival_model.ingest.images.IngestImages`, every
site's :class:`~survival_model.ingest.clinical.HarmoniseClinical` and the cohort) is reusable as one
:class:`~survival_model.stage.WholeStage` (:func:`ingestion_stage`, :func:`ingestion_outputs`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import numpy as np
import pandas as pd

from survival_model.config import SEQUENCES, IngestParams, Params
from survival_model.errors import DataSourceError
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import read_json, write_json, write_parquet, write_text
from survival_model.ingest import report
from survival_model.ingest.clinical import CLINICAL_FIELDS, ClinicalResult, HarmoniseClinical, has_outcome
from survival_model.ingest.discovery import discover_cases
from survival_model.ingest.images import IngestImages, case_id_for
from survival_model.ingest.privacy import Pseudonymiser, Redactor
from survival_model.patient import PatientOutcome
from survival_model.quarantine import QuarantineRecord, quarantine_frame
from survival_model.stage import Stage, WholeStage, relative_to, run

STAGE = "ingest_cohort"
REPORT_FILES = ("summary.json", "summary.md", "quarantine.csv", "cohort_summary.png")
PATH_COLUMNS = [*(f"path_{s}" for s in SEQUENCES), "path_mask", "path_brain_mask"]
#: The patient's ingested sequences, in canonical order, joined by ``+`` (e.g. ``t1c+t2w``): what its site declares.
SEQUENCES_COLUMN = "qc_sequences"


@dataclass(frozen=True)
class CohortResult:
    """Where the canonical cohort and quarantine tables are, with the summary and fingerprint."""

    folder: Path
    cohort_path: Path
    quarantine_path: Path
    summary: dict[str, Any]
    fingerprint: str

    def cohort(self) -> pd.DataFrame:
        """The cohort, its image paths absolute (stored relative to the work directory, which may move)."""
        frame = pd.read_parquet(self.cohort_path)
        work_dir = self.folder.parents[2]  # <work_dir>/ingest/cohort/<key>
        for column in PATH_COLUMNS:
            if column in frame:
                frame[column] = [str(work_dir / v) if isinstance(v, str) and v else v for v in frame[column]]
        return frame

    def quarantine(self) -> pd.DataFrame:
        return pd.read_parquet(self.quarantine_path)

    def report_files(self) -> list[Path]:
        """Human-facing outputs: summary JSON and Markdown, quarantine CSV, the cohort figure."""
        return [self.folder / name for name in REPORT_FILES]


def sequences_label(images: Mapping[str, Any]) -> str:
    """The sequences among ``images``' keys in canonical order, joined by ``+`` (``t1c+t2w``)."""
    return "+".join(s for s in SEQUENCES if s in images)


def _image_row(outcome: PatientOutcome) -> dict[str, Any]:
    patient = outcome.patient
    if patient is None:  # pragma: no cover - only called for ok outcomes
        raise ValueError("no images")
    row: dict[str, Any] = {"case_id": outcome.case_id, "images_key": patient.key,
                           "source_digest": patient.qc.get("source_digest")}
    for seq in SEQUENCES:
        path = patient.images.get(seq)
        row[f"path_{seq}"] = str(path) if path is not None else None
    row["path_mask"] = str(patient.mask)
    row["path_brain_mask"] = str(patient.brain_mask) if patient.brain_mask is not None else None
    row[SEQUENCES_COLUMN] = sequences_label(patient.images)
    row["qc_tumour_components"] = int(patient.qc["tumour_components"])
    row["qc_mask_geometry_fixed"] = bool(patient.qc["mask_geometry_fixed"])
    return row


def assemble(
    outcomes: Sequence[PatientOutcome],
    clinical: Sequence[ClinicalResult],
    params: IngestParams,
    site_errors: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, list[QuarantineRecord]]:
    """Join images and clinical rows in memory: (cohort table, quarantine records).

    ``site_errors`` maps a site whose images could not be listed at all to the error message.
    """
    site_errors = dict(site_errors or {})
    quarantine: list[QuarantineRecord] = []
    id_counts = Counter(o.case_id for o in outcomes)
    ok: dict[str, PatientOutcome] = {}
    for outcome in outcomes:
        if id_counts[outcome.case_id] > 1:
            quarantine.append(QuarantineRecord(outcome.site, outcome.case_id, "cohort", "duplicate_id",
                                               f"{outcome.case_id}: {id_counts[outcome.case_id]} image folders "
                                               "normalise to the same patient id"))
        elif outcome.ok:
            ok[outcome.case_id] = outcome
        quarantine.extend(outcome.quarantine)
    imaged = {o.case_id: o.site for o in outcomes}

    frames = []
    for result in clinical:
        if result.error is not None:
            for case_id, site in imaged.items():
                if site == result.site:
                    quarantine.append(QuarantineRecord(site, case_id, "clinical", "clinical_table_error",
                                                       f"{case_id}: {result.error}"))
            ok = {k: v for k, v in ok.items() if v.site != result.site}
            continue
        quarantine.extend(result.quarantine)
        table = result.table()
        if result.site in site_errors:
            for case_id in table["case_id"]:
                quarantine.append(QuarantineRecord(result.site, str(case_id), "images", "image_source_error",
                                                   f"{case_id}: {site_errors[result.site]}"))
            continue
        for case_id in table["case_id"]:
            if case_id not in imaged:
                quarantine.append(QuarantineRecord(result.site, str(case_id), "cohort", "missing_images",
                                                   f"{case_id}: a clinical row but no images were found"))
        frames.append(table)
    clinical_rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["site", "case_id"])
    clinical_ids = set(clinical_rows["case_id"].astype(str))
    clinical_quarantined = {q.case_id for r in clinical for q in r.quarantine}
    errored_sites = {r.site for r in clinical if r.error is not None}
    for case_id, outcome in ok.items():
        if case_id not in clinical_ids and case_id not in clinical_quarantined and outcome.site not in errored_sites:
            quarantine.append(QuarantineRecord(outcome.site, case_id, "cohort", "missing_clinical",
                                               f"{case_id}: images but no clinical row"))

    image_frame = pd.DataFrame([_image_row(o) for o in ok.values()])
    if image_frame.empty:
        image_frame = pd.DataFrame(columns=["case_id", "images_key", "source_digest", *PATH_COLUMNS,
                                            SEQUENCES_COLUMN, "qc_tumour_components", "qc_mask_geometry_fixed"])
    cohort = clinical_rows.merge(image_frame, on="case_id", how="inner")
    if params.check_lesion_count and not cohort.empty:
        declared = cohort["n_brain_mets"]
        mismatch = declared.notna() & (declared != cohort["qc_tumour_components"])
        for row in cohort[mismatch.fillna(False)].itertuples(index=False):
            quarantine.append(QuarantineRecord(
                str(row.site), str(row.case_id), "cohort", "lesion_count_mismatch",
                f"{row.case_id}: {row.n_brain_mets} metastases declared, {row.qc_tumour_components} "
                "tumour components in the mask"))
        cohort = cohort[~mismatch.fillna(False)]
    return cohort.sort_values(["site", "case_id"]).reset_index(drop=True), quarantine


def data_fingerprint(cohort: pd.DataFrame) -> str:
    """A digest of the cohort's data (ids, source file digests, clinical values): no paths, no code."""
    columns = [c for c in cohort.columns if c not in PATH_COLUMNS and c != "images_key"]
    records = cohort[columns].astype(object).where(cohort[columns].notna(), None).to_dict("records")
    return stable_hash(records)[:16]


class SiteSummary(TypedDict):
    """One site's counts in ``summary.json``.

    Outcome statistics cover the patients with an outcome only. A site whose patients have none (a table
    declaring no survival: patients to predict) has ``with_outcome`` 0 and ``events``, ``censored``,
    ``censored_fraction`` and ``median_time_days`` None ("no outcome", not "no deaths"). A site without
    patients in the cohort (all quarantined) keeps ``events`` and ``censored`` 0, the others None.
    """

    patients: int
    with_outcome: int
    without_outcome: int
    events: int | None
    censored: int | None
    censored_fraction: float | None
    median_time_days: float | None
    quarantined: int


def site_summary(rows: pd.DataFrame, quarantined: int) -> SiteSummary:
    """Counts of one site's cohort rows; outcome statistics over the patients with an outcome."""
    known = rows[has_outcome(rows)]
    n = len(known)
    events = int(known["event"].astype(int).sum()) if n or rows.empty else None
    return SiteSummary(
        patients=len(rows),
        with_outcome=n,
        without_outcome=len(rows) - n,
        events=events,
        censored=n - events if events is not None else None,
        censored_fraction=round(1 - events / n, 3) if events is not None and n else None,
        median_time_days=float(np.median(known["time_days"].to_numpy(dtype=float))) if n else None,
        quarantined=quarantined,
    )


def summarise(cohort: pd.DataFrame, quarantine: pd.DataFrame, sites: Sequence[str]) -> dict[str, Any]:
    """Counts per site and quarantine reasons: the numbers logged to MLflow and shown in Prefect.

    ``events`` (overall) counts observed deaths among patients with an outcome (0 when none has one);
    ``without_outcome`` counts patients to predict (their table declares no survival).
    """
    per_site: dict[str, SiteSummary] = {}
    for site in sites:
        quarantined = int(quarantine.loc[quarantine["site"] == site, "case_id"].nunique()) if len(quarantine) else 0
        per_site[site] = site_summary(cohort[cohort["site"] == site], quarantined)
    known = has_outcome(cohort)
    reasons = quarantine.groupby("reason")["case_id"].nunique().to_dict() if len(quarantine) else {}
    return {
        "patients": len(cohort),
        "events": int(cohort.loc[known, "event"].astype(int).sum()) if known.any() else 0,
        "without_outcome": int((~known).sum()),
        "quarantined_patients": int(quarantine["case_id"].nunique()) if len(quarantine) else 0,
        "quarantine_by_reason": {str(k): int(v) for k, v in sorted(reasons.items())},
        "sites": per_site,
        "missing_per_field": {f: int(cohort[f].isna().sum()) for f in CLINICAL_FIELDS if f in cohort},
        "sequences": sequence_counts(cohort, sites),
    }


def sequence_counts(cohort: pd.DataFrame, sites: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per site, how many of its cohort patients have each sequence (the sequences it declares; a sequence
    it does not declare is absent for all its patients: NaN features, a channel of zeros in the network)."""
    counts: dict[str, dict[str, int]] = {}
    for site in sites:
        labels: list[Any] = (list(cohort.loc[cohort["site"] == site, SEQUENCES_COLUMN])
                             if SEQUENCES_COLUMN in cohort else [])
        present = Counter(s for label in labels if isinstance(label, str) for s in label.split("+") if s)
        counts[site] = {s: int(present.get(s, 0)) for s in SEQUENCES}
    return counts


@dataclass(frozen=True)
class AssembleCohort(Stage[CohortResult]):
    """The cohort assembled from every case's image outcome and every site's clinical result, written to
    ``<work_dir>/ingest/cohort/<key[:16]>/`` (``cohort.parquet``, ``quarantine.parquet``, the reports).

    ``site_errors`` maps a site whose images could not be listed at all to the error message.
    ``pseudonym_key_fingerprint`` (``Pseudonymiser.fingerprint``, never the key) is recorded in
    ``summary.json`` as ``pseudonym_key_fingerprint``: which key the case ids were made with. It is not
    part of the key or of the data fingerprint: the key already changes every case id, hence the
    outcomes' content keys (the folder) and the cohort's data (the fingerprint), so two keys never share
    a folder; adding it would change nothing, and leaving it out keeps ``data_fingerprint`` a function
    of the written table alone.
    """

    name: ClassVar[str] = "assemble-cohort"
    outcomes: tuple[PatientOutcome, ...]
    clinical: tuple[ClinicalResult, ...]
    params: IngestParams
    work_dir: Path
    site_errors: dict[str, str] = field(default_factory=dict)
    pseudonym_key_fingerprint: str | None = None

    def make_key(self) -> str:
        return stable_hash(
            STAGE,
            code_version("survival_model.ingest.cohort"),
            sorted(o.key for o in self.outcomes),
            sorted((c.site, c.key) for c in self.clinical),
            self.params.model_dump(mode="json"),
            dict(self.site_errors),
        )

    def place(self) -> tuple[str, ...]:
        return ("ingest", "cohort")

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / "summary.json"]

    def compute(self, tmp: Path) -> None:
        sites = sorted({o.site for o in self.outcomes} | {c.site for c in self.clinical})
        cohort, records = assemble(self.outcomes, self.clinical, self.params, self.site_errors)
        quarantine = quarantine_frame(records)
        stored = cohort.copy()  # image paths relative to the work directory: a moved or copied one still works
        for column in PATH_COLUMNS:
            if column in stored:
                stored[column] = [relative_to(Path(v), self.work_dir) if isinstance(v, str) and v else v
                                  for v in stored[column]]
        write_parquet(stored, tmp / "cohort.parquet")
        write_parquet(quarantine, tmp / "quarantine.parquet")
        summary = summarise(cohort, quarantine, sites)
        summary["fingerprint"] = data_fingerprint(cohort)
        summary["pseudonym_key_fingerprint"] = self.pseudonym_key_fingerprint
        summary["clinical_reports"] = {c.site: c.report for c in self.clinical}
        summary["clinical_errors"] = {c.site: c.error for c in self.clinical if c.error}
        summary["image_source_errors"] = dict(self.site_errors)
        write_text(report.summary_markdown(summary), tmp / "summary.md")
        write_text(quarantine.to_csv(index=False), tmp / "quarantine.csv")
        report.plot_cohort(cohort, quarantine, tmp / "cohort_summary.png")
        write_json(summary, tmp / "summary.json")

    def load(self, folder: Path) -> CohortResult | None:
        return load_cohort(folder)


def load_cohort(folder: Path) -> CohortResult | None:
    """The cohort written in ``folder``, or None when it is not (completely) there."""
    if not (folder / "summary.json").is_file():
        return None
    summary = read_json(folder / "summary.json")
    return CohortResult(folder, folder / "cohort.parquet", folder / "quarantine.parquet", summary,
                        summary["fingerprint"])


# --------------------------------------------------------------------------------------------------
# The whole ingestion stage
# --------------------------------------------------------------------------------------------------


def ingestion_stage(
    images: Sequence[IngestImages],
    clinical: Sequence[HarmoniseClinical],
    params: IngestParams,
    work_dir: Path,
    site_errors: Mapping[str, str] | None = None,
) -> WholeStage[CohortResult]:
    """The whole ingestion stage: its key is every case's and site's content key, the params and site
    errors, and the version of the whole ingestion package."""
    key = stable_hash(
        STAGE,
        "stage",
        code_version("survival_model.ingest"),
        sorted(s.key() for s in images),
        sorted((s.site, s.key()) for s in clinical),
        params.model_dump(mode="json"),
        dict(site_errors or {}),
    )
    return WholeStage("ingest", key, work_dir, load_cohort)


def ingestion_outputs(
    images: Sequence[IngestImages], clinical: Sequence[HarmoniseClinical], cohort: CohortResult
) -> list[Path]:
    """The files a reuse of the ingestion stage needs: every case's and site's record (either outcome)
    and the cohort's tables and reports."""
    stages: list[Stage[Any]] = [*images, *clinical]
    return [*(p for s in stages for p in s.outputs(s.folder())), cohort.cohort_path, cohort.quarantine_path,
            *cohort.report_files()]


def run_ingestion(params: Params, pseudonymiser: Pseudonymiser) -> CohortResult:
    """The whole ingestion in this process, stage after stage, as the ingestion flow (``flows/ingest.py``) runs
    it through Prefect tasks: discovery per site (a site whose images cannot be listed becomes a site error),
    every case's images, every site's clinical table, the cohort. For benchmarks, tests and scripts that need
    ingestion without an orchestrator."""
    images: list[IngestImages] = []
    site_errors: dict[str, str] = {}
    for site, institution in params.institutions.items():
        try:
            with Redactor((institution.images.root,)).errors():  # as the flow's discovery: <source>, not the path
                cases = discover_cases(site, institution.images)
        except DataSourceError as exc:
            site_errors[site] = str(exc)
            continue
        images += [IngestImages(case_id_for(case, institution, pseudonymiser), case, institution, params.ingest,
                                params.work_dir, pseudonymiser.memo_key) for case in cases]
    clinical = [HarmoniseClinical(site, institution, params.ingest, pseudonymiser, params.work_dir)
                for site, institution in params.institutions.items()]
    outcomes = tuple(run(stage) for stage in images)
    results = tuple(run(stage) for stage in clinical)
    return run(AssembleCohort(outcomes, results, params.ingest, params.work_dir, site_errors,
                              pseudonymiser.fingerprint))
