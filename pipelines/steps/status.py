"""status: where things stand: registry aliases, the validated data window, the last gate."""

from __future__ import annotations

import json
from typing import Any

from pipelines.config import Params, Settings
from pipelines.layout import Layout
from pipelines.registry import CHALLENGER, CHAMPION, PREVIOUS_TAG, Registry, Version


def _describe(version: Version | None) -> dict[str, Any] | None:
    if version is None:
        return None
    t = version.tags
    return {
        "version": version.version, "run_id": version.run_id, "aliases": version.aliases,
        "data_version": t.get("mlops.data_version"), "window": t.get("mlops.window"),
        "holdout_roc_auc": t.get("mlops.holdout_roc_auc"), "holdout_brier": t.get("mlops.holdout_brier"),
        "gate_verdict": t.get("mlops.gate_verdict"), "promoted_at": t.get("mlops.promoted_at"),
        "promoted_by": t.get("mlops.promoted_by"), "promotion_reason": t.get("mlops.promotion_reason"),
        "forced": t.get("mlops.forced"),
    }  # fmt: skip


def collect_status(settings: Settings, params: Params) -> dict[str, Any]:
    layout = Layout.of(settings, params.get("validate.store"))
    registry = Registry(settings, params.get("promote.model_name"))
    champion = registry.alias(CHAMPION)
    previous = (
        registry.get(champion.tags[PREVIOUS_TAG]) if champion and champion.tags.get(PREVIOUS_TAG) else None
    )
    validated = layout.validated_days()
    gate_file = layout.reports / "gate.json"
    gate = json.loads(gate_file.read_text()) if gate_file.exists() else None
    return {
        "model": registry.name,
        "tracking_uri": settings.mlflow_uri,
        "champion": _describe(champion),
        "challenger": _describe(registry.alias(CHALLENGER)),
        "previous_champion": _describe(previous),
        "validated_data": {
            "days": len(validated),
            "first": validated[0].isoformat() if validated else None,
            "last": validated[-1].isoformat() if validated else None,
            "quarantined": [d.isoformat() for d in layout.quarantined_days()],
        },
        "last_gate": None
        if gate is None
        else {
            "verdict": gate["verdict"],
            "run_id": gate["run_id"],
            "evaluated_at": gate["evaluated_at"],
            "champion_version": gate["champion_version"],
            "holdout": gate["holdout"],
            "failed_checks": [
                f"{c['name']}: {c['value']} {c['op']} {c['threshold']}"
                for c in gate["checks"]
                if c["verdict"] == "fail"
            ],
            "report": str(layout.reports / "gate.md"),
        },
        "audit": registry.audit_trail()[-8:],
    }


def render_status(state: dict[str, Any]) -> str:
    def line(label: str, v: dict[str, Any] | None) -> str:
        if v is None:
            return f"{label:<18} none"
        extra = f", promoted {v['promoted_at']} by {v['promoted_by']}" if v.get("promoted_at") else ""
        return (f"{label:<18} v{v['version']}  roc_auc={v['holdout_roc_auc']} brier={v['holdout_brier']} "
                f"data={v['data_version']} window={v['window']} gate={v['gate_verdict']}{extra}")  # fmt: skip

    data = state["validated_data"]
    out = [
        f"model {state['model']}  (tracking: {state['tracking_uri']})",
        line("champion", state["champion"]),
        line("challenger", state["challenger"]),
        line("previous champion", state["previous_champion"]),
        f"{'validated data':<18} {data['days']} day(s) {data['first']} .. {data['last']}; "
        f"quarantined: {', '.join(data['quarantined']) or 'none'}",
    ]
    gate = state["last_gate"]
    if gate:
        why = "; ".join(gate["failed_checks"]) or "all checks passed"
        out.append(f"{'last gate':<18} {gate['verdict']} at {gate['evaluated_at']} vs "
                   f"{'v' + gate['champion_version'] if gate['champion_version'] else 'no champion'}: {why}")  # fmt: skip
        out.append(f"{'gate report':<18} {gate['report']}")
    if state["audit"]:
        out.append("audit trail (latest last):")
        for event in state["audit"]:
            details = {k: v for k, v in event.items() if k not in ("action", "at", "by")}
            out.append(
                f"  {event['at']}  {event['action']:<9} by {event['by']}: {json.dumps(details, default=str)}"
            )
    return "\n".join(out)
