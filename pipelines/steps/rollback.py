"""rollback: move ``champion`` back to the previous champion (or a named version), audited."""

from __future__ import annotations

import logging
from typing import Any

from pipelines.config import Params, Settings
from pipelines.registry import Registry

log = logging.getLogger(__name__)


def rollback(settings: Settings, params: Params) -> dict[str, Any]:
    cfg = params.section("rollback")
    registry = Registry(settings, params.get("promote.model_name"))
    before, after = registry.rollback(str(cfg["to"] or "previous"), str(cfg["reason"]))
    log.info("rollback: champion v%s -> v%s (%s)", before.version, after.version, cfg["reason"])
    return {"from": before.version, "to": after.version, "reason": cfg["reason"]}
