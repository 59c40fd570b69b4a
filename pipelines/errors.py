"""Errors that end a step, each mapped to an exit code by the CLI (see docs/exit-codes)."""

from __future__ import annotations


class StepError(Exception):
    """A step could not do its job; the message is the one line printed on stderr."""

    exit_code = 1


class BatchRejected(StepError):
    """A batch failed to read or validate and went to quarantine."""


class Skipped(Exception):
    """Done, and downstream should be skipped (exit 99): e.g. a gate refused a challenger."""

    exit_code = 99


class RegistryConflict(StepError):
    """The champion moved since the gate evaluated against it (compare-and-set failed)."""

    exit_code = 3


def describe_service_error(exc: BaseException) -> str | None:
    """One line for a tracking-server outage (MLflow's client raises a long exception with
    the whole urllib3 retry history); None for anything else (a bug keeps its traceback)."""
    import os
    import re

    text = str(exc)
    if not type(exc).__module__.startswith("mlflow") and "requests" not in type(exc).__module__:
        return None
    if getattr(exc, "error_code", "") in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        server = os.environ.get("MLFLOW_TRACKING_URI") or "the MLflow tracking server"
        return (f"{server} refused the credentials ({exc.error_code}): set MLFLOW_TRACKING_USERNAME and "  # type: ignore[attr-defined]
                "MLFLOW_TRACKING_PASSWORD to a user allowed to do this")  # fmt: skip
    match = re.search(r"API request to (https?://[^/\s]+)\S* failed with (exception|error code) (\S+)", text)
    if not match:
        return None
    server, kind, detail = match.groups()
    if kind == "error code":
        return f"MLflow tracking server {server} answered HTTP {detail}"
    reason = re.search(
        r"\[Errno -?\d+\] ([^'\")]+)|(Read timed out|Connection aborted|RemoteDisconnected)", text
    )
    why = (reason.group(1) or reason.group(2)).strip() if reason else detail.rstrip(":")
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    return f"MLflow tracking server {server} unreachable after {retries} retries ({why})"
