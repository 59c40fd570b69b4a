"""serve: the registry's champion behind a REST API (FastAPI on uvicorn).

    POST /predict   {"instances": [{feature: value, ...}, ...]} -> {"predictions": [...], ...}
    GET  /health    the process is up (always open)
    GET  /ready     the champion the registry wants is loaded (503 until then, and 503
                    "degraded" with wanted vs loaded when it cannot load what is wanted)
    GET  /metrics   Prometheus: requests and latency by model version and outcome,
                    the loaded versions, reloads, shadow scoring, the prediction log
    GET  /schema    the JSON schema of a request for the loaded champion

The request schema is built from the loaded model's MLflow signature (column names and
types) and the validation suite's ranges and code sets
(:func:`pipelines.expectations.feature_constraints`): malformed JSON, a missing or
unknown field, a wrong type or an out-of-range value gets a 422 naming the field.

A background thread polls the registry aliases (``serve.poll_interval_s``). A new
``champion`` (a promotion or a rollback) is downloaded and loaded off the request path,
then swapped in by one reference assignment: a request holds the version it started with
and none is dropped. If the wanted version cannot be loaded (say, a broken artifact), the
loaded one keeps answering but ``/ready`` turns 503 with the wanted and the loaded version,
so an orchestrator takes this replica out of rotation instead of serving a model the
registry no longer wants. The poll uses short timeouts and no long back-off (a registry
outage is counted and shown, the loaded model keeps serving), so a rollback after an outage
is picked up within one poll interval. Requests that arrive while the model is busy share its next call
(:class:`Batcher`). With ``serve.shadow``, a ``challenger`` that differs from the
champion scores the same requests from a bounded queue on another thread; the response
never waits for it. Every prediction (champion and shadow) goes to the prediction log:
rows are buffered and written in batches (``serve.log_flush_s`` / ``log_flush_rows``) as
``data/predictions/served/<day>/<file>.parquet``, published to the store under the same
key, in the columns ``monitor`` reads (``--set monitor.traffic=served``).

``MLOPS_SERVE_API_KEY``, when set, is required on ``/predict`` (``X-API-Key`` header or
``Authorization: Bearer``); health, readiness and metrics stay open.

One module per concern: :mod:`.app` (the app, its routes and `mlops serve`), :mod:`.request`
(the request schema), :mod:`.loaded` (a loaded version and its fast path), :mod:`.batching`,
:mod:`.holder` (the model holder and its poller), :mod:`.split` (the canary's traffic split),
:mod:`.predlog` (the prediction log) and :mod:`.metrics`. Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "direct_predictor", "load_version", "serve"]
_EXPORTS = {"create_app": "app", "serve": "app", "load_version": "loaded", "direct_predictor": "loaded"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
