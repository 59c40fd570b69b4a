"""audit: read and verify the registry's audit log (:mod:`pipelines.audit`).

mlops audit verify    the chain, the MLflow mirror and the live alias; exit 1 on a problem
mlops audit log       the records, one line each (--json: as stored)
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pipelines.config import Params, Settings
from pipelines.registry import Registry, describe
from pipelines.steps.status import verify_registry


def audit_verify(settings: Settings, params: Params, as_json: bool = False) -> int:
    registry = Registry(settings, params.get("promote.model_name"))
    check, _ = verify_registry(registry)
    if as_json:
        print(json.dumps({"ok": check.ok, "records": check.records, "problems": check.problems,
                          "notes": check.notes, "champion": check.champion_alias,
                          "audited_champion": check.champion_audited, "where": registry.audit_log.where}, indent=2))  # fmt: skip
    else:
        print(f"audit log of {registry.name!r} at {registry.audit_log.where}: {check.records} record(s)")
        for problem in check.problems:
            print(f"PROBLEM: {problem}")
        for note in check.notes:
            print(f"note: {note}")
        print(check.summary() if check.ok else f"{len(check.problems)} problem(s) found")
    if not check.ok:
        print(f"mlops audit: failed: {check.summary()}", file=sys.stderr)
        return 1
    return 0


def audit_log(settings: Settings, params: Params, last: int, as_json: bool = False) -> int:
    registry = Registry(settings, params.get("promote.model_name"))
    records: list[dict[str, Any]] = registry.audit_records()[-last:] if last else registry.audit_records()
    if as_json:
        print(json.dumps(records, indent=1, default=str))
    else:
        for record in records:
            print(describe(record))
    return 0
