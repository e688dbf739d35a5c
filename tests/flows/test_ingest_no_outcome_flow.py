"""The ingestion flow with a site whose clinical table declares no survival (patients to predict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.ingest import ingest
from survival_model.ingest.cohort import CohortResult
from tests.conftest import params_for

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_site_without_declared_survival_is_ingested_with_missing_outcomes(
    tiny_cohort_master: Path, tmp_path: Path
) -> None:
    params = params_for(tiny_cohort_master, tmp_path / "work", **{"institutions.site_a.clinical.survival": None})
    assert params.institutions["site_a"].clinical.survival is None
    result: CohortResult = ingest(params)
    cohort = result.cohort()
    site_a = cohort[cohort["site"] == "site_a"]
    others = cohort[cohort["site"] != "site_a"]
    assert len(site_a) > 0 and len(others) > 0
    assert site_a["time_days"].isna().all() and site_a["event"].isna().all()
    assert others["time_days"].notna().all() and others["event"].notna().all()
    # site_a had no survival-related bad patient: the quarantine is the usual one
    assert result.quarantine()["case_id"].nunique() == 13
    summary = result.summary
    assert summary["patients"] == 10 and summary["without_outcome"] == len(site_a)
    assert summary["sites"]["site_a"]["events"] is None
    assert summary["sites"]["site_a"]["without_outcome"] == len(site_a)
    assert summary["sites"]["site_b"]["events"] is not None
    assert "no outcome" in (result.folder / "summary.md").read_text(encoding="utf-8")
