"""The sections about how a run runs rather than what it computes: ``synthetic`` (the default cohort),
``privacy`` (pseudonymisation), ``tracking`` (MLflow), ``orchestration`` (Prefect) and ``servers``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from survival_model.config.base import StrictModel


class SyntheticParams(StrictModel):
    """The default synthetic cohort the main command makes when it is missing."""

    out_dir: Path = Path("data/synthetic")
    seed: int = 20250515
    patients: dict[str, int] = Field(default_factory=lambda: {"site_a": 60, "site_b": 50, "site_c": 38})
    shape: tuple[int, int, int] = (96, 96, 62)
    spacing_mm: float = Field(2.5, gt=0)
    bad_patients: bool = True
    # log hazard ratio per SD of the image-only contrast-enhancement latent (survival_model/synthetic/
    # survival.py); same default as GeneratorConfig.image_effect; 1.0 is the "strong" setting
    image_effect: float = Field(0.6, ge=-3.0, le=3.0)

    @field_validator("patients")
    @classmethod
    def _known_sites(cls, value: dict[str, int]) -> dict[str, int]:
        allowed = {"site_a", "site_b", "site_c"}
        if not value or set(value) - allowed:
            raise ValueError(f"synthetic sites must be among {sorted(allowed)} (got {sorted(value)})")
        if any(n < 0 for n in value.values()):
            raise ValueError("patient counts must be >= 0")
        return value


class PrivacyParams(StrictModel):
    """Pseudonymisation: case ids are a keyed hash of (site, source id); the key lives outside the repo.

    Where the key comes from, first match wins (resolved by the flows layer, ``tasks.privacy``):

    1. ``key_secret_block``: a Prefect Secret block of that name (``Secret.load(name).get()``); when set,
       it must exist: nothing else is tried;
    2. ``key_env``: an environment variable of that name, when it is set and not empty;
    3. ``key_file``: a file, when it exists;
    4. otherwise a random key is created at ``key_file`` only when ``create_key_if_missing`` is true and
       the run is not from a Prefect deployment (the one-command local run); anywhere else a missing key
       is a ``ConfigError`` saying where it was looked for.

    The key is the text of the secret, variable or file (stripped), at least 16 characters: the same
    text gives the same ids from any source. Only its fingerprint is ever written or logged.
    """

    key_file: Path = Path("~/.config/survival-model/pseudonym.key")
    #: Name of an environment variable holding the key (read at run time by the flows, never on import).
    key_env: str | None = "SURVIVAL_MODEL_PSEUDONYM_KEY"
    #: Name of a Prefect Secret block holding the key (for deployments).
    key_secret_block: str | None = None
    #: Create a missing key at ``key_file``: the local default run only, never in a deployment.
    create_key_if_missing: bool = True

    @field_validator("key_env", "key_secret_block")
    @classmethod
    def _no_blank_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a name or null, not blank")
        return value


class TrackingParams(StrictModel):
    """MLflow. ``tracking_uri: null`` means an embedded SQLite file under the work directory."""

    tracking_uri: str | None = None
    experiment: str = "brain-mets-survival"
    ui_url: str | None = None


class OrchestrationParams(StrictModel):
    """Prefect: task runner, retries, result persistence and cache isolation."""

    task_runner: Literal["threads", "processes", "dask"] = "threads"
    #: Threads mostly wait on I/O and the Prefect API: 8 suits 2 cores.
    max_workers: int = Field(8, ge=1, le=256)
    #: Dask scheduler address for ``task_runner: dask``; null starts a LocalCluster of
    #: ``max_workers`` single-threaded worker processes.
    dask_address: str | None = None
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: float = Field(2.0, ge=0)
    #: Serialise concurrent computations of the same cache key with file locks.
    cache_isolation: Literal["read_committed", "serializable"] = "serializable"
    #: Per-task timeout. Prefect can only enforce it in a process pool (a thread cannot be
    #: interrupted mid-I/O), so it is applied with ``task_runner: processes`` only.
    task_timeout_seconds: float | None = Field(None, gt=0)
    #: A stage (ingestion, imaging) none of whose inputs changed since a recorded run returns that
    #: run's result without submitting its per-patient tasks (``survival_model.stage.WholeStage``); false
    #: always goes through the per-patient tasks (each still cached).
    reuse_unchanged_stages: bool = True


class ServerParams(StrictModel):
    """The local long-lived Prefect server and MLflow UI (``survival-model ui start``)."""

    host: str = "127.0.0.1"
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    startup_timeout_seconds: float = Field(120.0, gt=0)
    #: The local servers' own folder (per user, like Prefect's default ``~/.prefect``): the Prefect
    #: database (``prefect/``), the servers' logs and which ones are running (``state.json``). Outside
    #: the work directory, so deleting a work directory neither breaks a running server nor makes
    #: the next run rebuild Prefect's database (~10 s).
    home: Path = Path("~/.cache/survival-model/servers")
    #: Where ``survival-model run`` reports its flow runs: ``local`` - the local Prefect server of
    #: ``ui start``, started (and left running, for the UI and the next run) when it is not up;
    #: ``temporary`` - Prefect's temporary server, started and stopped by every run (10-30 s each).
    prefect_api: Literal["local", "temporary"] = "local"
