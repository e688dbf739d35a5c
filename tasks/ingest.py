"""Ingestion tasks: discovery per institution, images per patient, clinical per institution, cohort.

Each cached task has a key function that mirrors the library's own content key, so a Prefect cache
hit and the library's content-keyed folder always agree.

The tasks carry no tags: Prefect acquires a tag-concurrency slot through its API for every run of a
tagged task, which measured 0.1-0.5 s per task here (retried 503s from the temporary server) and
dominated warm re-runs. Runs are told apart by their names (``images-<case id>``) and flows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from survival_model.config import IngestParams, Institution, Params
from survival_model.errors import DataSourceError
from survival_model.fingerprint import DigestMemo
from survival_model.ingest import clinical as clinical_lib
from survival_model.ingest import cohort as cohort_lib
from survival_model.ingest import images as images_lib
from survival_model.ingest.discovery import CaseFiles, discover_cases
from survival_model.ingest.privacy import Pseudonymiser
from tasks.common import digest_memo_path


@dataclass(frozen=True)
class Discovered:
    """One case found on disk, with its pseudonymous id (the raw files stay inside ingestion)."""

    case_id: str
    files: CaseFiles


@dataclass(frozen=True)
class SiteDiscovery:
    site: str
    cases: list[Discovered]
    error: str | None = None


@task(name="discover-cases", persist_result=False)
def discover(site: str, institution: Institution, pseudonymiser: Pseudonymiser) -> SiteDiscovery:
    """List a site's cases. Not cached and not persisted: it must look at the disk every run, and
    its result holds source identifiers that must not be stored by the orchestrator."""
    try:
        cases = discover_cases(site, institution.images)
    except DataSourceError as exc:
        return SiteDiscovery(site, [], str(exc))
    found = [Discovered(images_lib.case_id_for(c, institution, pseudonymiser), c) for c in cases]
    return SiteDiscovery(site, found)


def images_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    case: CaseFiles = inputs["case"]
    work_dir: Path = inputs["work_dir"]
    source = images_lib.source_digest(case, DigestMemo(digest_memo_path(work_dir)))
    key = images_lib.case_key(inputs["case_id"], source, inputs["institution"], inputs["params"])
    return key, images_lib.expected_output(work_dir, case.site, inputs["case_id"], key)


@task(name="ingest-images", task_run_name="images-{case_id}")
def ingest_images(
    case_id: str,
    case: CaseFiles,
    institution: Institution,
    params: IngestParams,
    pseudonymiser: Pseudonymiser,
    work_dir: Path,
) -> images_lib.ImageOutcome:
    return images_lib.ingest_case(case, institution, params, pseudonymiser, work_dir,
                                  DigestMemo(digest_memo_path(work_dir)))


def clinical_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    work_dir: Path = inputs["work_dir"]
    key = clinical_lib.clinical_key(inputs["site"], inputs["institution"], inputs["params"],
                                    inputs["pseudonymiser"], DigestMemo(digest_memo_path(work_dir)))
    return key, clinical_lib.clinical_expected_output(work_dir, inputs["site"], key)


@task(name="harmonise-clinical", task_run_name="clinical-{site}")
def harmonise_clinical(
    site: str,
    institution: Institution,
    params: IngestParams,
    pseudonymiser: Pseudonymiser,
    work_dir: Path,
) -> clinical_lib.ClinicalResult:
    return clinical_lib.harmonise_site(site, institution, params, pseudonymiser, work_dir,
                                       DigestMemo(digest_memo_path(work_dir)))


@dataclass(frozen=True)
class IngestStage:
    """The ingestion stage's key (``survival_model.stages``) and the per-item keys it is made of."""

    key: str
    cases: list[tuple[str, str, str]]  # (site, case id, content key)
    clinical: list[tuple[str, str]]  # (site, content key)

    def outputs(self, work_dir: Path) -> list[Path]:
        """The per-case and per-site files a reuse of this stage needs (either outcome of each)."""
        images = [images_lib.expected_output(work_dir, site, case_id, key) for site, case_id, key in self.cases]
        clinical = [clinical_lib.clinical_expected_output(work_dir, site, key) for site, key in self.clinical]
        return [p for paths in (*images, *clinical) for p in paths]


def ingest_stage(
    params: Params, found: list[SiteDiscovery], pseudonymiser: Pseudonymiser, site_errors: dict[str, str]
) -> IngestStage:
    """The stage key from the same key functions the per-case and per-site tasks use."""
    cases = []
    for discovery in found:
        institution = params.institutions[discovery.site]
        for c in discovery.cases:
            key, _ = images_key({"case": c.files, "work_dir": params.work_dir, "case_id": c.case_id,
                                 "institution": institution, "params": params.ingest})
            cases.append((discovery.site, c.case_id, key))
    clinical = [
        (site, clinical_key({"site": site, "institution": institution, "params": params.ingest,
                             "pseudonymiser": pseudonymiser, "work_dir": params.work_dir})[0])
        for site, institution in params.institutions.items()
    ]
    key = cohort_lib.stage_key([k for _, _, k in cases], clinical, params.ingest, site_errors)
    return IngestStage(key, cases, clinical)


def cohort_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    key = cohort_lib.cohort_key(inputs["outcomes"], inputs["clinical"], inputs["params"], inputs["site_errors"])
    return key, [cohort_lib.cohort_folder(inputs["work_dir"], key) / "summary.json"]


@task(name="assemble-cohort")
def assemble_cohort(
    outcomes: list[images_lib.ImageOutcome],
    clinical: list[clinical_lib.ClinicalResult],
    site_errors: dict[str, str],
    params: IngestParams,
    work_dir: Path,
    pseudonym_key_fingerprint: str | None = None,
) -> cohort_lib.CohortResult:
    """The cohort (the key's fingerprint goes into its summary; the key changes the case ids, so the
    outcomes' keys already tell cohorts made with different keys apart)."""
    return cohort_lib.build_cohort(outcomes, clinical, params, work_dir, site_errors=site_errors,
                                   pseudonym_key_fingerprint=pseudonym_key_fingerprint)
