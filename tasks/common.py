"""Options shared by every task: retries with backoff for transient failures only, timeouts, storage."""

from __future__ import annotations

from typing import Any, TypeVar

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from survival_model.config import Params
from survival_model.errors import SurvivalModelError, TransientIOError
from tasks.caching import KeyFn, content_cache, result_storage

T = TypeVar("T", bound=Task[Any, Any])


def is_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry I/O and server hiccups; never retry our own validation or configuration errors."""
    try:
        state.result()
    except TransientIOError:
        return True
    except SurvivalModelError:
        return False
    except Exception:  # noqa: BLE001 - anything else (OSError, timeouts, HTTP) may be transient
        return True
    return False


def configure(task: T, params: Params, key_fn: KeyFn | None = None) -> T:
    """The task with this run's retries, timeout, result storage and (optionally) content cache."""
    orchestration = params.orchestration
    options: dict[str, Any] = {
        "retries": orchestration.retries,
        "retry_delay_seconds": [orchestration.retry_delay_seconds * 3**i for i in range(orchestration.retries)]
        or 0,
        "retry_condition_fn": is_transient,
    }
    if orchestration.task_runner == "processes" and orchestration.task_timeout_seconds:
        options["timeout_seconds"] = orchestration.task_timeout_seconds
    if key_fn is not None:
        options["cache_policy"] = content_cache(
            key_fn, params.work_dir, serializable=orchestration.cache_isolation == "serializable"
        )
        options["persist_result"] = True
        options["result_storage"] = result_storage(params.work_dir)
    return task.with_options(**options)  # type: ignore[return-value]
