"""MLflow tracking seam: one place that points MLflow at the configured store.

- Bounded outages: MLflow's client retries an unreachable server for minutes by default.
  :func:`connect` sizes its retries and timeouts to ``MLOPS_REGISTRY_TIMEOUT_S`` (default
  30 s) unless the user set MLflow's own variables, so a command fails with one line in
  bounded time instead of hanging (or reading an outage as an empty registry).
- Runs a killed process left RUNNING are closed as FAILED by the next step that starts a
  run (:func:`close_stale_runs`): each run is tagged with the host and process that own it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from pipelines.config import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

_HTTP_KNOBS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
RETRIES, BACKOFF, JITTER = 2, 1, 1.0  # sleeps of about 1 + 2 s (+ up to 1 s jitter each)


def bound_http(budget_s: float, retries: int = RETRIES) -> None:
    """Fit MLflow's HTTP retries and per-request timeout into ``budget_s`` seconds (worst case:
    every attempt times out), unless the user set any of MLflow's own knobs."""
    if any(os.environ.get(k) for k in _HTTP_KNOBS):
        return
    sleeps = sum(BACKOFF * 2**i + JITTER for i in range(retries))
    timeout = max(1, int((budget_s - sleeps) / (retries + 1)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(BACKOFF)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = str(JITTER)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at the tracking store and return a client.

    The embedded default is a SQLite store in the project's home, with artifacts in
    ``mlartifacts/``; ``MLFLOW_TRACKING_URI`` (or ``MLOPS_TRACKING_URI``) selects a server.
    """
    bound_http(settings.registry_timeout_s)
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings, client: MlflowClient, suffix: str = "") -> str:
    """The pipeline's experiment (``suffix`` e.g. "-monitoring" for a sibling), created on
    first use (artifacts beside the SQLite store by default, rather than in whatever folder
    the process happens to run in)."""
    name = settings.experiment + suffix
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = settings.artifact_root if settings.mlflow_uri.startswith("sqlite:") else None
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:  # created concurrently by another step
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


def _process_start(pid: int) -> str:
    """The kernel's start time of a process (clock ticks since boot): a pid reused by another
    process has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run (see :func:`close_stale_runs`)."""
    pid = os.getpid()
    return {"mlops.host": socket.gethostname(), "mlops.pid": str(pid), "mlops.pid_start": _process_start(pid)}


def close_stale_runs(client: MlflowClient, experiment: str, max_age_h: float | None = None) -> list[str]:
    """Close as FAILED the RUNNING runs of ``experiment`` whose process is gone: owned by this
    host and no longer alive (or its pid now belongs to another process), or older than
    ``max_age_h`` (``MLOPS_STALE_RUN_HOURS``, default 24; runs from other hosts or
    containers, whose processes cannot be looked at from here)."""
    from mlflow.entities import RunStatus

    from pipelines.locks import pid_alive

    if max_age_h is None:
        max_age_h = float(os.environ.get("MLOPS_STALE_RUN_HOURS", "24"))
    host = socket.gethostname()
    closed = []
    runs = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'", max_results=200)
    for run in runs:
        tags = run.data.tags
        pid, start = int(tags.get("mlops.pid", "0") or 0), tags.get("mlops.pid_start", "")
        if pid == os.getpid():
            continue
        age_h = (time.time() * 1000 - (run.info.start_time or 0)) / 3_600_000
        gone = (
            tags.get("mlops.host") == host
            and pid > 0
            and (not pid_alive(pid) or _process_start(pid) != start)
        )
        if not (gone or age_h > max_age_h):
            continue
        why = f"its process {pid} on {host} is gone" if gone else f"started {age_h:.0f} h ago"
        client.set_tag(run.info.run_id, "mlops.closed_because", f"left RUNNING by a killed process ({why})")
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
        closed.append(run.info.run_id)
        log.warning("closed MLflow run %s (%s) as FAILED: left RUNNING, %s", run.info.run_id,
                    run.info.run_name, why)  # fmt: skip
    return closed


def run_name(step: str, detail: str) -> str:
    """A run name that says what started it and is unique: step, detail, the orchestrator's
    run (or "cli") and the time."""
    import datetime as dt

    origin = os.environ.get("MLOPS_RUN") or "cli"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{step} {detail} [{origin}] {stamp}"


def describe_tracking_error(settings: Settings | None, exc: BaseException) -> str | None:
    """One line for an MLflow outage, naming the server and the time bound; None otherwise."""
    from pipelines.errors import describe_service_error

    line = describe_service_error(exc)
    if line is None:
        return None
    budget = settings.registry_timeout_s if settings is not None else 30.0
    return f"{line}; gave up within ~{budget:.0f} s (MLOPS_REGISTRY_TIMEOUT_S)"
