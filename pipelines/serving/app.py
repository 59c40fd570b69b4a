"""The FastAPI app and its routes, and `mlops serve` (uvicorn)."""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime
import contextlib
import logging
import os
import time
import uuid
from typing import Any

from pipelines.config import Params, Settings
from pipelines.serving.holder import ROLE_CHAMPION, Server
from pipelines.serving.request import field_errors

log = logging.getLogger(__name__)

DESCRIPTION = "The registry's champion behind a REST API (FastAPI on uvicorn)."


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
            errors = field_errors(exc)
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
