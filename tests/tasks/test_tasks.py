"""Task adapters tested through `.fn()`: discovery, the stage tasks' options, retry policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.states import Failed

from survival_model.config import Params
from survival_model.errors import ConfigError, PatientDataError, TransientIOError
from survival_model.ingest.clinical import HarmoniseClinical
from tasks import ingest as t
from tasks.caching import ContentCache
from tasks.common import configure, is_transient
from tasks.privacy import pseudonymiser as resolve_pseudonymiser
from tasks.stage import StageTasks, run_stage


def test_discover_gives_pseudonymous_ids_and_reports_a_missing_folder(tiny_params: Params) -> None:
    pseudonymiser = resolve_pseudonymiser(tiny_params.privacy)
    found = t.discover.fn("site_b", tiny_params.institutions["site_b"], pseudonymiser)
    assert found.error is None and len(found.cases) == 7  # 3 good + 4 bad with images
    assert found.cases[0].case_id == pseudonymiser.case_id("site_b", "1")
    broken = tiny_params.institutions["site_b"].model_copy(update={
        "images": tiny_params.institutions["site_b"].images.model_copy(update={"root": Path("/nonexistent")})})
    missing = t.discover.fn("site_b", broken, pseudonymiser)
    assert missing.cases == [] and "does not exist" in (missing.error or "")


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (TransientIOError("network file system busy"), True),
        (OSError("I/O error"), True),
        (PatientDataError("empty_mask", "x: empty"), False),
        (ConfigError("bad key"), False),
    ],
)
def test_only_transient_failures_are_retried(error: Exception, retry: bool) -> None:
    assert is_transient(run_stage, None, Failed(data=error)) is retry  # type: ignore[arg-type]


def test_configure_sets_cache_retries_and_storage(tiny_params: Params) -> None:
    clinical = HarmoniseClinical("site_c", tiny_params.institutions["site_c"], tiny_params.ingest,
                                 resolve_pseudonymiser(tiny_params.privacy), tiny_params.work_dir)
    configured = StageTasks(tiny_params).task(clinical)
    assert configured.name == "harmonise-clinical"
    assert isinstance(configured.cache_policy, ContentCache)
    assert configured.retries == tiny_params.orchestration.retries
    assert configured.retry_delay_seconds == [2.0, 6.0]
    assert configured.persist_result is True
    assert Path(str(configured.result_storage)) == tiny_params.work_dir / "prefect" / "results"
    assert configured.cache_policy.isolation_level == "SERIALIZABLE"
    plain = configure(t.discover, tiny_params)
    assert plain.cache_policy is t.discover.cache_policy
