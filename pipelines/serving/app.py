"""The FastAPI app and its routes, and `mlops serve` (uvicorn)."""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime
import asyncio
import contextlib
import logging
import os
import time
import uuid
from typing import Any

from pipelines.config import Params, Settings
from pipelines.serving import split
from pipelines.serving.holder import ROLE_CHAMPION, Server
from pipelines.serving.loaded import Loaded
from pipelines.serving.request import field_errors

log = logging.getLogger(__name__)

DESCRIPTION = "The registry's champion behind a REST API (FastAPI on uvicorn)."


class ModelFailed(Exception):
    """A model raised while answering (a 500, counted with outcome `error` and who answered)."""

    def __init__(self, role: str, version: str, cause: BaseException) -> None:
        super().__init__(f"v{version} ({role}) failed: {type(cause).__name__}: {str(cause)[:200]}")
        self.role, self.version = role, version
        log.error("serve: %s", self)

    def body(self) -> dict[str, Any]:
        return {"detail": f"the model failed to answer: {self}"}


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
        "type": "object", "required": ["error", "detail"],
        "properties": {"error": {"type": "string", "description": "the first problems, each naming its field"},
                       "detail": {"type": "array", "minItems": 1, "items": {
                           "type": "object", "required": ["loc", "field", "msg", "type"],
                           "properties": {"field": {"type": "string", "minLength": 1,
                                                    "description": "e.g. instances[3].dest; `body` when the body is not JSON"},
                                          "loc": {"type": "array"}, "msg": {"type": "string"}, "type": {"type": "string"}}}}},
    }  # fmt: skip
    detail = {
        "application/json": {
            "schema": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
        }
    }
    paths = spec["paths"]
    json_object = {"application/json": {"schema": {"type": "object"}}}
    paths["/health"]["get"]["responses"] = {
        "200": {"description": "the process answers", "content": json_object}
    }
    paths["/ready"]["get"]["responses"] = {
        "200": {"description": "a champion is loaded and serving", "content": json_object},
        "503": {"description": "not ready: no champion loaded yet, or the registry unreachable too long", "content": json_object},
    }  # fmt: skip
    paths["/schema"]["get"]["responses"] = {
        "200": {"description": "the JSON schema of a request to the champion being served", "content": json_object},
        "503": {"description": "no champion loaded yet", "content": json_object},
    }  # fmt: skip
    paths["/metrics"]["get"]["responses"] = {
        "200": {"description": "Prometheus exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}},
    }  # fmt: skip
    operation = paths["/predict"]["post"]
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    }
    operation["responses"] = {
        "200": {"description": "the delay probability of each flight", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
        "401": {"description": "missing or wrong API key (header X-API-Key)", "content": detail},
        "422": {"description": "a field is wrong (named in `error`)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationError422"}}}},
        "500": {"description": "the model failed to answer (counted as outcome `error`)", "content": detail},
        "503": {"description": "no champion loaded yet", "content": detail},
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
    app = FastAPIOffline(title="mlops-flights", description=DESCRIPTION, lifespan=lifespan,
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

        def done(outcome: str, body: dict[str, Any], status: int, role: str = ROLE_CHAMPION) -> Response:
            answered = body.get("model_version", version)  # a request the canary answered alone: its version
            server.metrics.requests.labels(answered, role, outcome).inc()
            server.metrics.latency.labels(answered, role, outcome).observe(time.perf_counter() - started)
            return JSONResponse(body, status_code=status)

        if not server.authorized(request.headers):
            return done("unauthorized", {"detail": "missing or wrong API key (X-API-Key)"}, 401)
        if champion is None:
            return done("unavailable", {"detail": "no champion loaded yet"}, 503)
        try:
            parsed = champion.request_model.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = field_errors(exc)
            message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:5])
            return done("invalid", {"detail": errors, "error": message}, 422)
        records = [item.__dict__ for item in parsed.instances]
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        route = server.canary_route
        if parsed.explain:
            missing = [
                m.version for m in (champion, route[0] if route else None) if m and m.explainer is None
            ]
            if missing:
                detail = (
                    f"v{missing[0]} cannot explain its predictions (not a tree model the server can walk)"
                )
                return done("invalid", {"detail": [{"loc": ["body", "explain"], "field": "explain", "msg": detail,
                                                    "type": "explain_unavailable"}], "error": f"explain: {detail}"}, 422)  # fmt: skip
        if route is not None:  # a canary is live: the split decides who answers each flight
            try:
                body = await split_predict(champion, route, parsed, records, request, request_id)
            except ModelFailed as failed:  # counted by role: the deploy loop's error-rate guardrail reads it
                return done("error", failed.body(), 500, failed.role)
            return done("ok", body, 200, body["roles"][0] if len(set(body["roles"])) == 1 else "split")
        frame = champion.frame(records)
        try:
            predictions = await server.batcher.predict(champion, frame)
        except Exception as exc:
            return done("error", ModelFailed(ROLE_CHAMPION, version, exc).body(), 500)
        server.log.add(records, predictions, version, ROLE_CHAMPION, request_id)
        server.metrics.rows.labels(version, ROLE_CHAMPION).inc(len(frame))
        server.shadow(frame, records, request_id, predictions)
        body = {"predictions": [round(float(p), 6) for p in predictions], "model": server.registry.name,
                "model_version": version, "request_id": request_id}  # fmt: skip
        if parsed.explain:
            body["explanations"] = champion.explain(frame, records, server.explain_top)
            server.metrics.explained.inc(len(records))
        return done("ok", body, 200)

    async def split_predict(champion: Loaded, route: tuple[Loaded, float], parsed: Any,
                            records: list[dict[str, Any]], request: Any, request_id: str) -> dict[str, Any]:  # fmt: skip
        """Each flight to the champion or the canary (:mod:`pipelines.serving.split`); one model
        call per side, both queued at once; the log and the metrics say who answered."""
        import numpy as np

        canary, share = route
        keys = parsed.keys or [request.headers.get("x-routing-key") or request_id] * len(records)
        champion_rows, canary_rows = split.parts(split.to_canary(keys, share, canary.version))
        sides = [(m, rows, role) for m, rows, role in ((champion, champion_rows, ROLE_CHAMPION),
                 (canary, canary_rows, split.CANARY_ROLE)) if rows]  # fmt: skip
        try:
            if len(sides) == 1:  # the usual case (one flight, or a request routed as a whole): no copies
                subsets = [records]
                frames = [sides[0][0].frame(records)]
                answers = [await server.batcher.predict(sides[0][0], frames[0])]
            else:
                subsets = [[records[i] for i in rows] for _, rows, _ in sides]
                frames = [m.frame(subset) for (m, _, _), subset in zip(sides, subsets, strict=True)]
                answers = await asyncio.gather(
                    *(server.batcher.predict(m, f) for (m, _, _), f in zip(sides, frames, strict=True))
                )
        except Exception as exc:
            one = len(sides) == 1
            raise ModelFailed(
                sides[0][2] if one else "split", sides[0][0].version if one else "split", exc
            ) from exc
        predictions = np.empty(len(records), dtype="float64")
        versions, roles = [champion.version] * len(records), [ROLE_CHAMPION] * len(records)
        explanations: list[Any] = [None] * len(records)
        for (m, rows, role), subset, frame, answer in zip(sides, subsets, frames, answers, strict=True):
            predictions[rows] = answer
            if parsed.explain:
                for i, explained in zip(rows, m.explain(frame, subset, server.explain_top), strict=True):
                    explanations[i] = explained
                server.metrics.explained.inc(len(rows))
            for i in rows:
                versions[i], roles[i] = m.version, role
            server.log.add(subset, answer, m.version, role, request_id)
            server.metrics.rows.labels(m.version, role).inc(len(frame))
            if m is champion:
                server.shadow(frame, subset, request_id, answer)
        body = {"predictions": [round(float(p), 6) for p in predictions], "model": server.registry.name,
                "model_version": versions[0] if len(set(versions)) == 1 else champion.version,
                "model_versions": versions, "roles": roles, "request_id": request_id}  # fmt: skip
        if parsed.explain:
            body["explanations"] = explanations
        return body

    return app


def serve(settings: Settings, params: Params, host: str, port: int) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # one OpenMP thread in every thread of the process, set before scikit-learn loads
    # libgomp: a team started by another thread (the poller's check of a version it loads)
    # slowed every request after it (measured: p50 2.7 -> 8.9 ms once a canary was loaded;
    # threadpoolctl's limit is per calling thread). A request's few rows gain nothing from more.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
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
