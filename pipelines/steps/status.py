"""status: where things stand: registry aliases, the validated data window, the last gate,
and the audit log, verified (``mlops audit verify`` runs the same check)."""

from __future__ import annotations

import json
from typing import Any

from pipelines.audit import Verification, verify
from pipelines.config import ConfigError, Params, Settings
from pipelines.layout import Layout
from pipelines.registry import CANARY, CHALLENGER, CHAMPION, Registry, Version, describe, previous_champion


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
        "forced": t.get("mlops.forced"), "rolled_back_at": t.get("mlops.rolled_back_at"),
    }  # fmt: skip


def verify_registry(registry: Registry) -> tuple[Verification, list[dict[str, Any]]]:
    """The audit log checked against itself, its MLflow mirror and the live alias."""
    records = registry.audit_records()
    model = registry.model()
    aliases = {k: str(v) for k, v in (model.aliases if model is not None else {}).items()}
    return verify(records, dict(model.tags) if model is not None else None, aliases.get(CHAMPION),
                  aliases.get(CANARY)), records  # fmt: skip


def collect_status(settings: Settings, params: Params) -> dict[str, Any]:
    layout = Layout.of(settings, params.get("validate.store"))
    registry = Registry(settings, params.get("promote.model_name"))
    aliases = registry.aliases()
    champion = registry.get(aliases[CHAMPION]) if CHAMPION in aliases else None
    challenger = registry.get(aliases[CHALLENGER]) if CHALLENGER in aliases else None
    canary_version, share = registry.canary()
    canary = registry.get(canary_version) if canary_version else None
    try:
        check, records = verify_registry(registry)
        audit: dict[str, Any] = {"where": registry.audit_log.where, "ok": check.ok, "summary": check.summary(),
                                 "problems": check.problems, "notes": check.notes, "records": len(records)}  # fmt: skip
    except ConfigError as exc:
        records, audit = [], {"where": None, "ok": False, "summary": f"audit log not configured: {exc}",
                              "problems": [str(exc)], "notes": [], "records": 0}  # fmt: skip
    before = previous_champion(records, champion.version) if champion else None
    validated = layout.validated_days()
    gate_file = layout.reports / "gate.json"
    gate = json.loads(gate_file.read_text()) if gate_file.exists() else None
    return {
        "model": registry.name,
        "tracking_uri": settings.mlflow_uri,
        "champion": _describe(champion),
        "challenger": _describe(challenger),
        "canary": None if canary is None else {**(_describe(canary) or {}), "share": share},
        "previous_champion": _describe(registry.get(before)) if before else None,
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
        "audit_check": audit,
        "audit": records[-8:],
    }


def render_status(state: dict[str, Any]) -> str:
    def line(label: str, v: dict[str, Any] | None) -> str:
        if v is None:
            return f"{label:<18} none"
        extra = f", promoted {v['promoted_at']} by {v['promoted_by']}" if v.get("promoted_at") else ""
        if v.get("rolled_back_at"):
            extra += f", rolled back {v['rolled_back_at']}"
        return (f"{label:<18} v{v['version']}  roc_auc={v['holdout_roc_auc']} brier={v['holdout_brier']} "
                f"data={v['data_version']} window={v['window']} gate={v['gate_verdict']}{extra}")  # fmt: skip

    data = state["validated_data"]
    out = [
        f"model {state['model']}  (tracking: {state['tracking_uri']})",
        line("champion", state["champion"]),
        line("challenger", state["challenger"]),
        *(
            [line("canary", state["canary"]) + f", on {state['canary']['share']:.0%} of traffic"]
            if state.get("canary")
            else []
        ),
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
    check = state["audit_check"]
    mark = "ok" if check["ok"] else "PROBLEM"
    out.append(
        f"{'audit':<18} [{mark}] {check['summary']}" + (f" ({check['where']})" if check["where"] else "")
    )
    out += [f"{'':<18} note: {note}" for note in check["notes"]]
    if state["audit"]:
        out.append("audit trail (latest last):")
        out += [f"  {describe(record)}" for record in state["audit"]]
    if state.get("canary"):
        out.append(
            f"end the canary:    mlops canary promote|rollback --expect {state['canary']['version']} --reason '...'"
        )
    champion = state["champion"]
    if champion:
        target = state["previous_champion"]
        out.append(f"roll back with:    mlops rollback --expect {champion['version']}"
                   f"{'' if target else ' --to VERSION'} --reason '...'"
                   + (f"   (back to v{target['version']})" if target else ""))  # fmt: skip
    return "\n".join(out)
