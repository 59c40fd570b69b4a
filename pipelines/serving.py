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
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime
import asyncio
import collections
import contextlib
import datetime as dt
import gc
import logging
import os
import queue
import secrets
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import schema
from pipelines.config import Params, Settings
from pipelines.layout import Layout
from pipelines.registry import CHALLENGER, CHAMPION, Registry

log = logging.getLogger(__name__)

ROLE_CHAMPION, ROLE_SHADOW = CHAMPION, "shadow"  # the prediction log's `role` (monitor keeps the champion's)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


# -- the loaded model and its request schema --------------------------------------------------
@dataclass
class Loaded:
    """One registered version, ready to predict, with the request schema of its signature."""

    version: str
    run_id: str
    model: Any
    columns: list[str]
    numeric: list[str]
    request_model: Any  # a pydantic model: {"instances": [Flight, ...]}
    fast: Any = None  # the same computation without joblib's dispatch (see direct_predictor)

    def frame(self, records: list[dict[str, Any]]) -> Any:
        """The model's input frame, built column by column (None -> NaN in number columns)."""
        import numpy as np
        import pandas as pd

        numeric = set(self.numeric)
        data = {
            c: np.array([r[c] for r in records], dtype="float64" if c in numeric else object)
            for c in self.columns
        }
        return pd.DataFrame(data, columns=self.columns)

    def predict(self, frame: Any) -> Any:
        if self.fast is not None:
            return self.fast(frame)
        return self.model.predict_proba(frame)[:, 1]


def direct_predictor(model: Any) -> Any:
    """For a Pipeline([ColumnTransformer, classifier]): P(late) from the same fitted
    transformers and classifier, without the per-call overhead that dominates a one-row
    prediction (ColumnTransformer's joblib dispatch, ~0.7 ms; OrdinalEncoder's input checks,
    ~1.7 ms): an OrdinalEncoder's fitted categories become dict lookups (unknown and missing
    values get its encoded values), passthrough columns are taken as they are, and the
    classifier itself predicts. None when the pipeline has another shape (the pipeline is
    then called). load_version uses it only if it gives the pipeline's answers on the
    model's input example; tests compare the two on real days."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    if not (isinstance(model, Pipeline) and len(model.steps) == 2):
        return None
    encode, classify = model.steps[0][1], model.steps[1][1]
    if not isinstance(encode, ColumnTransformer) or encode.sparse_output_:
        return None
    parts = []
    for _, transformer, columns in encode.transformers_:
        if transformer == "drop" or len(columns) == 0:
            continue
        if not (transformer == "passthrough" or hasattr(transformer, "transform")):
            return None
        parts.append((transformer, list(encode.feature_names_in_[columns]) if not isinstance(columns[0], str)
                      else list(columns)))  # fmt: skip

    def block(transformer: Any, columns: list[str], frame: Any) -> Any:
        if transformer == "passthrough":
            return frame[columns].to_numpy(dtype="float64")
        codes = ordinal_codes.get(id(transformer))
        if codes is None:
            return np.asarray(transformer.transform(frame[columns]), dtype="float64")
        out = np.empty((len(frame), len(columns)), dtype="float64")
        for j, (column, (lookup, unknown, missing)) in enumerate(zip(columns, codes, strict=True)):
            out[:, j] = [missing if v is None or v != v else lookup.get(v, unknown) for v in frame[column]]
        return out

    # OrdinalEncoder(handle_unknown="use_encoded_value"): its fitted categories as lookups
    ordinal_codes: dict[int, list[tuple[dict[Any, float], float, float]]] = {}
    for transformer, _ in parts:
        if (
            isinstance(transformer, OrdinalEncoder) and transformer.handle_unknown == "use_encoded_value"
            and getattr(transformer, "infrequent_categories_", None) is None
            and not any(_has_nan(c) for c in transformer.categories_)
        ):  # fmt: skip
            ordinal_codes[id(transformer)] = [
                ({v: float(i) for i, v in enumerate(categories)}, float(transformer.unknown_value),
                 float(transformer.encoded_missing_value))
                for categories in transformer.categories_
            ]  # fmt: skip

    def predict(frame: Any) -> Any:
        blocks = [block(transformer, columns, frame) for transformer, columns in parts]
        return classify.predict_proba(np.hstack(blocks))[:, 1]

    return predict


def request_model(signature: Any, max_instances: int) -> Any:
    """The pydantic model of a request for a model with ``signature``: one typed field per
    signature input, bounded by the validation suite; unknown fields are refused."""
    from typing import Annotated, Literal

    from mlflow.types import DataType
    from pydantic import AfterValidator, ConfigDict, Field, create_model

    from pipelines.expectations import feature_constraints

    constraints = feature_constraints()
    numeric_types = {DataType.double, DataType.float, DataType.long, DataType.integer}
    fields: dict[str, Any] = {}
    for spec in signature.inputs.inputs:
        name, kind = spec.name, spec.type
        allowed = constraints.get(name)
        if kind == DataType.string:
            if isinstance(allowed, frozenset) and len(allowed) <= 20:
                fields[name] = (Literal[tuple(sorted(allowed))], ...)
            elif isinstance(allowed, frozenset):  # e.g. 1,462 airports: a short message, not the list
                fields[name] = (Annotated[str, AfterValidator(_known_code(name, allowed))], ...)
            else:
                fields[name] = (str, ...)
        elif kind in numeric_types:
            bounds: dict[str, Any] = {"allow_inf_nan": False}
            if isinstance(allowed, tuple):
                bounds.update(ge=allowed[0], le=allowed[1])
            number = Annotated[float, Field(**bounds)]
            if name in schema.INTEGRAL_FEATURES:  # an hour, a minute of the day, a distance in miles
                number = Annotated[number, AfterValidator(_whole)]  # type: ignore[assignment,misc]
            if name in schema.NULLABLE_FEATURES:  # e.g. a weather reading that is missing
                fields[name] = (number | None, None)
            else:
                fields[name] = (number, ...)
        else:
            raise ValueError(f"signature input {name!r} has a type the server does not map: {kind}")
    strict = ConfigDict(extra="forbid", strict=True)
    flight = create_model("Flight", __config__=strict, **fields)
    return create_model(
        "PredictRequest", __config__=strict,
        instances=(Annotated[list[flight], Field(min_length=1, max_length=max_instances)], ...),  # type: ignore[valid-type]
    )  # fmt: skip


def _whole(value: float) -> float:
    if value != int(value):
        raise ValueError(f"{value} is not a whole number")
    return value


def _known_code(name: str, allowed: frozenset[str]) -> Any:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(
                f"{value!r} is not a known {name} code (the validation suite knows {len(allowed)})"
            )
        return value

    return check


def _has_nan(values: Any) -> bool:
    return any(v is None or v != v for v in values)


def load_version(registry: Registry, version: str, max_instances: int) -> Loaded:
    """Download a registered version, load it and build its request schema."""
    import mlflow
    from mlflow.models import Model

    mv = registry.get(version)
    if mv is None:
        raise LookupError(f"model {registry.name!r} has no version {version}")
    with tempfile.TemporaryDirectory(prefix="mlops-serve-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=registry.model_uri(mv), dst_path=tmp, tracking_uri=registry.settings.mlflow_uri
        )
        meta = Model.load(str(Path(local) / "MLmodel"))
        if meta.signature is None:
            raise ValueError(f"model {registry.name!r} v{version} has no signature")
        model = mlflow.sklearn.load_model(local)
        example: Any = meta.load_input_example(local) if meta.saved_input_example_info else None
    columns = [spec.name for spec in meta.signature.inputs.inputs]
    numeric = [spec.name for spec in meta.signature.inputs.inputs if spec.type.name != "string"]
    loaded = Loaded(version=version, run_id=mv.run_id, model=model, columns=columns, numeric=numeric,
                    request_model=request_model(meta.signature, max_instances))  # fmt: skip
    fast = direct_predictor(model)
    if fast is not None:  # used only if it gives the pipeline's answers on the input example
        import numpy as np

        if example is not None:
            frame = loaded.frame(example.to_dict(orient="records"))
            if np.allclose(fast(frame), model.predict_proba(frame)[:, 1], rtol=0, atol=1e-12):
                loaded.fast = fast
            else:
                log.warning(
                    "serve: v%s: the direct path disagrees with the pipeline; using the pipeline", version
                )
    return loaded


# -- metrics ---------------------------------------------------------------------------------
class Metrics:
    def __init__(self, model_name: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mlops_serve_requests", "Predict requests by model version and outcome",
                                ["model_version", "outcome"], registry=r)  # fmt: skip
        self.latency = Histogram("mlops_serve_request_latency_seconds", "Predict latency in the app",
                                 ["model_version", "outcome"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.rows = Counter(
            "mlops_serve_predictions", "Flights scored", ["model_version", "role"], registry=r
        )
        self.model_info = Gauge("mlops_serve_model_info", "Loaded model versions (1 = loaded)",
                                ["model", "alias", "version"], registry=r)  # fmt: skip
        self.reloads = Counter(
            "mlops_serve_reloads", "Alias changes picked up", ["alias", "outcome"], registry=r
        )
        self.shadow = Counter("mlops_serve_shadow", "Shadow scoring by outcome", ["outcome"], registry=r)
        self.log_rows = Counter(
            "mlops_serve_log_rows", "Prediction-log rows by outcome", ["outcome"], registry=r
        )
        self.batch_rows = Histogram("mlops_serve_batch_rows", "Rows per model call (requests batched under load)",
                                    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000), registry=r)  # fmt: skip
        self.wanted_loaded = Gauge("mlops_serve_wanted_loaded",
                                   "1 when the loaded champion is the one the registry wants", registry=r)  # fmt: skip
        self.model_name = model_name

    def loaded(self, alias: str, old: Loaded | None, new: Loaded | None) -> None:
        if old is not None:
            self.model_info.remove(self.model_name, alias, old.version)
        if new is not None:
            self.model_info.labels(self.model_name, alias, new.version).set(1)


def _one_thread() -> None:
    """No OpenMP threads for this thread's predictions: for the few rows of a request,
    starting and spinning them costs more than it brings (and competes with the event
    loop). OpenMP's thread count is per calling thread, hence a call in each."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


# -- batching --------------------------------------------------------------------------------
class Batcher:
    """Requests share model calls. A scikit-learn call costs about the same for 1 row as
    for 100 (per-call checks, per-tree overhead), so under load the requests that arrived
    while the model was busy go into one call (up to ``max_rows``). It runs on the event
    loop, not on a thread: one process is one core, and a second thread would only fight
    the loop for the GIL. No request waits for a batch to fill: an idle server predicts
    at once."""

    def __init__(self, max_rows: int, metrics: Metrics) -> None:
        self.max_rows, self.metrics = max_rows, metrics
        self._pending: list[tuple[Loaded, Any, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="serve-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def predict(self, loaded: Loaded, frame: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((loaded, frame, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        import pandas as pd

        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # the requests read in this turn of the loop join the batch
            batch: list[tuple[Loaded, Any, asyncio.Future[Any]]] = []
            rows = 0
            while self._pending and (not batch or rows + len(self._pending[0][1]) <= self.max_rows):
                item = self._pending.pop(0)
                batch.append(item)
                rows += len(item[1])
            if not self._pending:
                self._wake.clear()
            by_model: dict[int, list[tuple[Loaded, Any, asyncio.Future[Any]]]] = {}
            for item in batch:  # a swap may fall inside a batch: each request keeps its version
                by_model.setdefault(id(item[0]), []).append(item)
            for items in by_model.values():
                loaded = items[0][0]
                frames = [item[1] for item in items]
                try:
                    predictions = loaded.predict(frames[0] if len(frames) == 1 else pd.concat(frames))
                except Exception as exc:
                    for item in items:
                        if not item[2].done():
                            item[2].set_exception(exc)
                    continue
                self.metrics.batch_rows.observe(len(predictions))
                start = 0
                for _, frame, future in items:
                    if not future.done():  # a client that went away cancelled its request
                        future.set_result(predictions[start : start + len(frame)])
                    start += len(frame)


# -- the prediction log ----------------------------------------------------------------------
class PredictionLog:
    """Predictions buffered in memory and written in batches, in monitor's columns."""

    def __init__(self, settings: Settings, layout: Layout, metrics: Metrics, flush_rows: int) -> None:
        self.layout, self.metrics = layout, metrics
        self.store = settings.store()  # one client for the life of the server, not one per flush
        self.flush_rows = flush_rows
        self.max_pending = flush_rows * 20  # bounded when the store is down for long
        self._pending: collections.deque[tuple[Any, Any, str, str, str, str]] = collections.deque()
        self._rows = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.wake = threading.Event()
        self._seq = 0
        self._stem = f"{socket.gethostname()}-{os.getpid()}"

    def add(
        self, records: list[dict[str, Any]], predictions: Any, version: str, role: str, request_id: str
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            self._pending.append((records, predictions, version, role, request_id, now.isoformat()))
            self._rows += len(records)
            while self._rows > self.max_pending and len(self._pending) > 1:
                dropped = self._pending.popleft()
                self._rows -= len(dropped[0])
                self.metrics.log_rows.labels("dropped").inc(len(dropped[0]))
            if self._rows >= self.flush_rows:
                self.wake.set()

    def flush(self) -> int:
        """Write what is pending, one file per UTC day; what fails stays pending."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = list(self._pending), collections.deque()
                self._rows = 0
            by_day: dict[str, list[tuple[Any, Any, str, str, str, str]]] = collections.defaultdict(list)
            for entry in batch:
                by_day[entry[5][:10]].append(entry)
            written = 0
            days = sorted(by_day)
            for index, day in enumerate(days):
                try:
                    written += self._write(day, by_day[day])
                except Exception as exc:  # the store is down: the rest waits for the next flush
                    kept = [entry for d in days[index:] for entry in by_day[d]]
                    rows = sum(len(entry[0]) for entry in kept)
                    log.warning(
                        "prediction log: flush failed, %d row(s) kept for the next one: %s", rows, exc
                    )
                    self.metrics.log_rows.labels("retried").inc(rows)
                    with self._lock:
                        self._pending.extendleft(reversed(kept))
                        self._rows += rows
                    break
            self.metrics.log_rows.labels("written").inc(written)
            return written

    def _write(self, day: str, entries: list[tuple[Any, Any, str, str, str, str]]) -> int:
        import numpy as np
        import pandas as pd

        from pipelines.storage import atomic_write_parquet

        # one frame from all the records at once (per-request frames would cost a concat)
        rows = pd.DataFrame([record for entry in entries for record in entry[0]])
        numeric = [c for c in rows.columns if c in schema.NUMERIC_FEATURES]
        rows[numeric] = rows[numeric].astype("float64")  # a column of nulls stays a number column
        rows.columns = [f"f_{c}" for c in rows.columns]
        counts = [len(entry[0]) for entry in entries]
        rows["prediction"] = np.concatenate([np.asarray(entry[1], dtype="float64") for entry in entries])
        for index, column in ((2, "model_version"), (3, "role"), (4, "request_id"), (5, "served_at")):
            rows[column] = np.repeat(np.array([entry[index] for entry in entries], dtype=object), counts)
        rows["batch_date"] = day
        self._seq += 1
        name = f"{dt.datetime.now(dt.UTC):%H%M%S}-{self._stem}-{self._seq:06d}.parquet"
        out = self.layout.served_dir(dt.date.fromisoformat(day)) / name
        staged = out.with_name(f".{name}.staged")
        atomic_write_parquet(staged, rows)
        try:  # the local file appears only once the store has it
            if self.store is not None:
                self.store.put_file(f"predictions/served/{day}/{name}", staged)
            os.replace(staged, out)
        finally:
            staged.unlink(missing_ok=True)
        return len(rows)


# -- the server state ------------------------------------------------------------------------
class Server:
    """The loaded champion (and shadow challenger), the reload and flush threads."""

    def __init__(self, settings: Settings, params: Params) -> None:
        serve = params.section("serve")
        self.poll_interval = float(serve["poll_interval_s"])
        self.shadow_enabled = bool(serve["shadow"])
        self.flush_interval = float(serve["log_flush_s"])
        self.max_instances = int(serve["max_instances"])
        self.batch_rows = int(serve["batch_rows"])
        self.registry = Registry(settings, params.get("promote.model_name"))
        self.metrics = Metrics(self.registry.name)
        self.layout = Layout.of(settings, params.get("validate.store"))
        self.log = PredictionLog(settings, self.layout, self.metrics, int(serve["log_flush_rows"]))
        self.champion: Loaded | None = None
        self.challenger: Loaded | None = None
        self.wanted: dict[str, str | None] = {CHAMPION: None, CHALLENGER: None}  # per the registry
        self.load_errors: dict[str, str] = {}  # alias -> why its wanted version is not loaded
        self.registry_error: str | None = None
        self.registry_error_since: float | None = None
        self._cache: dict[str, Loaded] = {}
        self._shadow_queue: queue.Queue[tuple[Any, list[dict[str, Any]], str] | None] = queue.Queue(
            int(serve["shadow_queue"])
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        key = os.environ.get("MLOPS_SERVE_API_KEY", "")
        self.api_key = key.encode() if key else None

    # reloading
    def _load(self, version: str) -> Loaded:
        if version not in self._cache:
            self._cache[version] = load_version(self.registry, version, self.max_instances)
            for old in list(self._cache)[:-3]:  # keep a few: a rollback swaps back at once
                if old not in {version, *(m.version for m in (self.champion, self.challenger) if m)}:
                    del self._cache[old]
        return self._cache[version]

    def refresh(self) -> bool:
        """Look at the aliases once; swap in what changed. True when something changed."""
        changed = False
        aliases = self.registry.aliases()  # RegistryUnavailable when it does not answer
        self.wanted = {CHAMPION: aliases.get(CHAMPION), CHALLENGER: aliases.get(CHALLENGER)}
        targets = {CHAMPION: aliases.get(CHAMPION)}
        if self.shadow_enabled:
            targets[CHALLENGER] = aliases.get(CHALLENGER)
        for alias, version in targets.items():
            current = self.champion if alias == CHAMPION else self.challenger
            if alias == CHALLENGER and (self.champion is None or version == self.champion.version):
                version = None  # nothing to shadow: no champion yet, or the challenger was promoted
            if (current.version if current else None) == version:
                self.load_errors.pop(alias, None)
                continue
            try:
                new = self._load(version) if version else None
            except Exception as exc:
                self.metrics.reloads.labels(alias, "failed").inc()
                message = f"cannot load v{version}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                if self.load_errors.get(alias) != message:  # once per failure, not every poll
                    log.error(
                        "serve: %s %s; still serving v%s",
                        alias,
                        message,
                        current.version if current else "none",
                    )
                self.load_errors[alias] = message
                continue
            self.load_errors.pop(alias, None)
            if alias == CHAMPION:
                self.champion = new  # one reference assignment: requests in flight keep theirs
            else:
                self.challenger = new
            self.metrics.loaded(alias, current, new)
            self.metrics.reloads.labels(alias, "swapped").inc()
            log.info("serve: %s v%s -> v%s", alias, current.version if current else "none", version)
            changed = True
        self.metrics.wanted_loaded.set(
            1.0 if self.wanted[CHAMPION] == (self.champion.version if self.champion else None) else 0.0
        )
        if changed:
            # what is loaded now lives as long as the process: out of the collector's sight,
            # so that a full collection (~170 ms over ~350k objects) never stalls a request
            gc.freeze()
        return changed

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /ready."""
        loaded = self.champion.version if self.champion else None
        wanted = self.wanted[CHAMPION]
        registry = {"reachable": self.registry_error is None, "error": self.registry_error,
                    "unreachable_for_s": None if self.registry_error_since is None
                    else round(time.monotonic() - self.registry_error_since, 1)}  # fmt: skip
        body: dict[str, Any] = {"model": self.registry.name, "wanted": wanted, "loaded": loaded, "version": loaded,
                                "shadow": self.challenger.version if self.challenger else None, "registry": registry}  # fmt: skip
        if loaded is None:
            reason = self.load_errors.get(CHAMPION) or (
                "no champion in the registry yet" if wanted is None else f"loading v{wanted}"
            )
            return 503, {**body, "ready": False, "state": "starting" if not self.load_errors else "degraded",
                         "reason": reason}  # fmt: skip
        if wanted is not None and wanted != loaded:
            return 503, {**body, "ready": False, "state": "degraded",
                         "reason": self.load_errors.get(CHAMPION) or f"loading v{wanted}"}  # fmt: skip
        return 200, {
            **body,
            "ready": True,
            "state": "ok" if self.registry_error is None else "registry-unreachable",
        }

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
                self.registry_error = self.registry_error_since = None
            except Exception as exc:  # the registry is unreachable: keep serving what is loaded
                self.metrics.reloads.labels(CHAMPION, "registry_error").inc()
                if self.registry_error is None:
                    self.registry_error_since = time.monotonic()
                    log.warning("serve: registry poll failed, serving v%s: %s",
                                self.champion.version if self.champion else "none", exc)  # fmt: skip
                self.registry_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self.log.wake.wait(self.flush_interval)
            self.log.wake.clear()
            self.log.flush()

    def _shadow_loop(self) -> None:
        _one_thread()
        while True:
            item = self._shadow_queue.get()
            if item is None:
                return
            frame, records, request_id = item
            challenger = self.challenger
            if challenger is None:
                continue
            try:
                predictions = challenger.predict(frame[challenger.columns])
            except Exception as exc:
                self.metrics.shadow.labels("error").inc()
                log.warning("serve: shadow v%s failed: %s", challenger.version, exc)
                continue
            self.log.add(records, predictions, challenger.version, ROLE_SHADOW, request_id)
            self.metrics.rows.labels(challenger.version, ROLE_SHADOW).inc(len(frame))
            self.metrics.shadow.labels("scored").inc()

    def shadow(self, frame: Any, records: list[dict[str, Any]], request_id: str) -> None:
        if self.challenger is None:
            return
        try:
            self._shadow_queue.put_nowait((frame, records, request_id))
        except queue.Full:
            self.metrics.shadow.labels("dropped").inc()

    def start(self) -> None:
        _one_thread()  # the event loop's thread runs the champion
        # what the first flush would import (tens of ms holding the GIL) is imported now
        import pyarrow.parquet  # noqa: F401

        self.batcher = Batcher(self.batch_rows, self.metrics)
        self.batcher.start()
        try:
            self.refresh()
        except Exception as exc:  # start anyway: /ready says 503 until a champion loads
            log.warning("serve: registry not reachable at start-up: %s", exc)
        for target in (self._poll, self._flush_loop, self._shadow_loop):
            thread = threading.Thread(target=target, name=f"serve-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def stop(self) -> None:
        await self.batcher.stop()
        self._stop.set()
        self.log.wake.set()
        self._shadow_queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self.log.flush()

    def authorized(self, headers: Any) -> bool:
        if self.api_key is None:
            return True
        given = headers.get("x-api-key") or ""
        bearer = headers.get("authorization") or ""
        if bearer.lower().startswith("bearer "):
            given = given or bearer[7:]
        return secrets.compare_digest(given.encode(), self.api_key)


def _errors(exc: Any) -> list[dict[str, Any]]:
    """Pydantic errors as FastAPI's 422 body lists them, with a readable field path."""
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ["body", *error["loc"]]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        out.append({"loc": loc, "field": path or "body", "msg": error["msg"], "type": error["type"]})
    return out


def openapi(app: Any, server: "Server") -> dict[str, Any]:
    """OpenAPI with the request schema of the champion being served (it follows reloads):
    /predict reads its body itself (for speed), so FastAPI cannot infer it."""
    from fastapi.openapi.utils import get_openapi

    version = server.champion.version if server.champion else None
    cached = getattr(app.state, "openapi_cache", None)
    if cached is not None and cached[0] == version:
        return dict(cached[1])
    spec = get_openapi(title=app.title, version=f"model {server.registry.name} v{version or '-'}",
                       description=app.description, routes=app.routes)  # fmt: skip
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    if server.champion is not None:
        body = server.champion.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas["PredictRequest"] = body
    else:
        schemas["PredictRequest"] = {"type": "object", "description": "no champion loaded yet"}
    schemas["PredictResponse"] = {
        "type": "object", "required": ["predictions", "model", "model_version", "request_id"],
        "properties": {"predictions": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                                       "description": "P(arrival more than 15 minutes late, or not at all), per flight"},
                       "model": {"type": "string"}, "model_version": {"type": "string"},
                       "request_id": {"type": "string"}},
    }  # fmt: skip
    schemas["ValidationError422"] = {
        "type": "object", "properties": {"error": {"type": "string", "description": "the first problems, each naming its field"},
                                         "detail": {"type": "array", "items": {"type": "object"}}},
    }  # fmt: skip
    operation = spec["paths"]["/predict"]["post"]
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    }
    operation["responses"] = {
        "200": {"description": "the delay probability of each flight", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
        "401": {"description": "missing or wrong API key"},
        "422": {"description": "a field is wrong (named in `error`)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationError422"}}}},
        "503": {"description": "no champion loaded yet"},
    }  # fmt: skip
    app.state.openapi_cache = (version, spec)
    return spec


def create_app(settings: Settings, params: Params) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import ValidationError

    server = Server(settings, params)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        server.start()
        yield
        await server.stop()

    from fastapi_offline import FastAPIOffline

    # Swagger UI (/docs) and ReDoc (/redoc) from assets in the package: they work offline
    app = FastAPIOffline(title="mlops-flights", description=__doc__.split("\n\n")[0], lifespan=lifespan,
                         docs_url="/docs", redoc_url="/redoc")  # fmt: skip
    app.openapi = lambda: openapi(app, server)  # type: ignore[method-assign]
    app.state.server = server

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        status, body = server.readiness()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/schema")
    async def request_schema() -> Response:
        champion = server.champion
        if champion is None:
            return JSONResponse({"detail": "no champion loaded yet"}, status_code=503)
        return JSONResponse(champion.request_model.model_json_schema())

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        champion = server.champion  # this request's model, whatever a reload does meanwhile
        version = champion.version if champion else "none"

        def done(outcome: str, body: dict[str, Any], status: int) -> Response:
            server.metrics.requests.labels(version, outcome).inc()
            server.metrics.latency.labels(version, outcome).observe(time.perf_counter() - started)
            return JSONResponse(body, status_code=status)

        if not server.authorized(request.headers):
            return done("unauthorized", {"detail": "missing or wrong API key (X-API-Key)"}, 401)
        if champion is None:
            return done("unavailable", {"detail": "no champion loaded yet"}, 503)
        try:
            parsed = champion.request_model.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = _errors(exc)
            message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:5])
            return done("invalid", {"detail": errors, "error": message}, 422)
        records = [item.__dict__ for item in parsed.instances]
        frame = champion.frame(records)
        predictions = await server.batcher.predict(champion, frame)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        server.log.add(records, predictions, version, ROLE_CHAMPION, request_id)
        server.metrics.rows.labels(version, ROLE_CHAMPION).inc(len(frame))
        server.shadow(frame, records, request_id)
        return done("ok", {"predictions": [round(float(p), 6) for p in predictions],
                           "model": server.registry.name, "model_version": version,
                           "request_id": request_id}, 200)  # fmt: skip

    return app


def serve(settings: Settings, params: Params, host: str, port: int) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pipelines.tracking import bound_http

    # the poll must notice a promotion or rollback within a poll interval, outage or not:
    # short requests, one retry, no minutes of back-off (unless MLflow's own knobs are set).
    # At least a 10 s budget (4 s per request): loading a model downloads ~60 files, and a
    # 1 s read timeout failed them on a busy MLflow server (seen with a 5 s poll).
    bound_http(max(10.0, min(15.0, float(params.get("serve.poll_interval_s")))), retries=1)
    import uvicorn

    app = create_app(settings, params)
    log.info("serve: %s on http://%s:%d (tracking %s)", app.state.server.registry.name, host, port,
             settings.mlflow_uri)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0
