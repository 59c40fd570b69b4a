"""The model holder: what the registry's aliases want, loaded off the request path by a
polling thread and swapped in by one reference assignment; shadow scoring; the log's flushes."""

import gc
import logging
import os
import queue
import secrets
import threading
import time
from typing import Any

from pipelines.config import Params, Settings
from pipelines.layout import Layout
from pipelines.registry import CANARY, CHALLENGER, CHAMPION, Registry, canary_share
from pipelines.serving.batching import Batcher, one_thread
from pipelines.serving.loaded import Loaded, load_version
from pipelines.serving.metrics import Metrics
from pipelines.serving.predlog import PredictionLog

log = logging.getLogger(__name__)

ROLE_CHAMPION, ROLE_SHADOW = CHAMPION, "shadow"  # the prediction log's `role` (monitor keeps the champion's)


class Server:
    """The loaded champion (and shadow challenger), the reload and flush threads."""

    def __init__(self, settings: Settings, params: Params) -> None:
        serve = params.section("serve")
        self.poll_interval = float(serve["poll_interval_s"])
        self.shadow_enabled = bool(serve["shadow"])
        self.flush_interval = float(serve["log_flush_s"])
        self.max_instances = int(serve["max_instances"])
        self.batch_rows = int(serve["batch_rows"])
        self.explain_top = int(serve["explain_top"])
        self.registry = Registry(settings, params.get("promote.model_name"))
        self.metrics = Metrics(self.registry.name)
        self.layout = Layout.of(settings, params.get("validate.store"))
        self.log = PredictionLog(settings, self.layout, self.metrics, int(serve["log_flush_rows"]))
        self.champion: Loaded | None = None
        self.challenger: Loaded | None = None
        self.canary: Loaded | None = None
        self.canary_route: tuple[Loaded, float] | None = None  # set with the canary and its share
        self.wanted: dict[str, str | None] = {CHAMPION: None, CHALLENGER: None}  # per the registry
        self.load_errors: dict[str, str] = {}  # alias -> why its wanted version is not loaded
        self.registry_error: str | None = None
        self.registry_error_since: float | None = None
        self._cache: dict[str, Loaded] = {}
        self._shadow_queue: queue.Queue[tuple[Any, list[dict[str, Any]], str, Any] | None] = queue.Queue(
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
                if old not in {
                    version,
                    *(m.version for m in (self.champion, self.challenger, self.canary) if m),
                }:
                    del self._cache[old]
        return self._cache[version]

    def refresh(self) -> bool:
        """Look at the aliases once; swap in what changed. True when something changed."""
        changed = False
        model = self.registry.model()  # RegistryUnavailable when it does not answer
        aliases = {k: str(v) for k, v in (model.aliases if model else {}).items()}
        share = canary_share(dict(model.tags)) if model is not None else 0.0
        self.wanted = {alias: aliases.get(alias) for alias in (CHAMPION, CHALLENGER, CANARY)}
        targets = {CHAMPION: aliases.get(CHAMPION), CANARY: aliases.get(CANARY) if share > 0 else None}
        if self.shadow_enabled:
            targets[CHALLENGER] = aliases.get(CHALLENGER)
        for alias, version in targets.items():
            current = {CHAMPION: self.champion, CHALLENGER: self.challenger, CANARY: self.canary}[alias]
            if alias != CHAMPION and (self.champion is None or version == self.champion.version):
                version = None  # nothing to shadow or split: no champion yet, or it was promoted
            if alias == CHALLENGER and version is not None and version == targets.get(CANARY):
                version = None  # the canary answers its own share: no shadow of it as well
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
            elif alias == CANARY:
                self.canary = new
            else:
                self.challenger = new
            self.metrics.loaded(alias, current, new)
            self.metrics.reloads.labels(alias, "swapped").inc()
            log.info("serve: %s v%s -> v%s", alias, current.version if current else "none", version)
            changed = True
        self.canary_route = self._route(share)
        self.metrics.wanted_loaded.set(
            1.0 if self.wanted[CHAMPION] == (self.champion.version if self.champion else None) else 0.0
        )
        if changed:
            # what is loaded now lives as long as the process: out of the collector's sight,
            # so that a full collection (~170 ms over ~350k objects) never stalls a request
            gc.freeze()
        return changed

    def _route(self, share: float) -> tuple[Loaded, float] | None:
        """(canary, share) when requests are to be split; None when the champion answers all."""
        canary, champion = self.canary, self.champion
        if canary is None or champion is None or share <= 0:
            return None
        if not set(canary.columns) <= set(champion.columns):  # requests carry the champion's fields
            message = (f"v{canary.version} needs fields the champion v{champion.version} does not take: "
                       f"{sorted(set(canary.columns) - set(champion.columns))}; not splitting")  # fmt: skip
            if self.load_errors.get(CANARY) != message:
                log.error("serve: canary %s", message)
            self.load_errors[CANARY] = message
            return None
        return canary, share

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /ready."""
        loaded = self.champion.version if self.champion else None
        wanted = self.wanted[CHAMPION]
        registry = {"reachable": self.registry_error is None, "error": self.registry_error,
                    "unreachable_for_s": None if self.registry_error_since is None
                    else round(time.monotonic() - self.registry_error_since, 1)}  # fmt: skip
        body: dict[str, Any] = {"model": self.registry.name, "wanted": wanted, "loaded": loaded, "version": loaded,
                                "shadow": self.challenger.version if self.challenger else None,
                                "canary": self.canary_route[0].version if self.canary_route else None,
                                "canary_share": self.canary_route[1] if self.canary_route else 0.0, "registry": registry}  # fmt: skip
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
        # a version loaded here is checked by predicting (the fast path, the explainer): with
        # OpenMP's default of one thread per core, this thread's team stayed and slowed every
        # request after it (measured: p50 2.7 -> 8.9 ms once a canary had been loaded)
        one_thread()
        while not self._stop.wait(self.poll_interval):
            self.metrics.monitor(self.layout.reports)
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
        one_thread()
        while True:
            item = self._shadow_queue.get()
            if item is None:
                return
            frame, records, request_id, answered = item
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
            for gap in abs(predictions - answered):  # how far the challenger is from what was answered
                self.metrics.shadow_gap.observe(float(gap))

    def shadow(self, frame: Any, records: list[dict[str, Any]], request_id: str, answered: Any) -> None:
        if self.challenger is None:
            return
        try:
            self._shadow_queue.put_nowait((frame, records, request_id, answered))
        except queue.Full:
            self.metrics.shadow.labels("dropped").inc()

    def start(self) -> None:
        one_thread()  # the event loop's thread runs the champion
        # what the first flush would import (tens of ms holding the GIL) is imported now
        import pyarrow.parquet  # noqa: F401

        self.batcher = Batcher(self.batch_rows, self.metrics)
        self.batcher.start()
        try:
            self.refresh()
        except Exception as exc:  # start anyway: /ready says 503 until a champion loads
            log.warning("serve: registry not reachable at start-up: %s", exc)
        self.metrics.monitor(self.layout.reports)
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
