"""promote: consume the gate report (never re-decide) and act on the registry.

The trained model is registered (once per run) and becomes ``challenger``. If the gate
blessed it, or a forced promotion names its reason, ``champion`` moves to it by
compare-and-set against the champion the gate evaluated. A refusal leaves the champion
as it is and exits 99 (downstream skipped).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipelines.config import Params, Settings
from pipelines.errors import Skipped, StepError
from pipelines.layout import Layout
from pipelines.registry import Registry

log = logging.getLogger(__name__)


def promote_if_blessed(settings: Settings, params: Params) -> dict[str, Any]:
    layout = Layout.of(settings, params.get("validate.store"))
    cfg = params.section("promote")
    try:
        gate = json.loads((layout.reports / "gate.json").read_text())
        trained = json.loads((layout.reports / "train.json").read_text())
    except FileNotFoundError as exc:
        raise StepError(f"promote needs the gate report: {exc.filename} is missing (run evaluate)") from None
    if gate["run_id"] != trained["run_id"]:
        raise StepError(
            f"the gate report is for run {gate['run_id']} but the trained model is run "
            f"{trained['run_id']}: re-run `mlops evaluate`"
        )
    forced, reason = bool(cfg["force"]), str(cfg["reason"]).strip()
    if forced and not reason:
        raise StepError("a forced promotion needs a reason (--reason '...' or --set promote.reason=...)")

    registry = Registry(settings, cfg["model_name"])
    failed = [c["name"] for c in gate["checks"] if c["verdict"] == "fail"]
    version = registry.register(
        trained["model_uri"], trained["run_id"],
        tags={
            "mlops.data_version": trained["data_version"],
            "mlops.window": f"{trained['window_start']}..{trained['window_end']}",
            "mlops.gate_verdict": gate["verdict"],
            "mlops.gate_failed_checks": ", ".join(failed)[:4000],
            "mlops.holdout_roc_auc": f"{gate['challenger']['roc_auc']:.5f}",
            "mlops.holdout_brier": f"{gate['challenger']['brier']:.5f}",
            "mlops.gate_report": f"runs:/{trained['run_id']}/gate/gate.json",
        },
    )  # fmt: skip
    result = {"version": version.version, "run_id": trained["run_id"], "verdict": gate["verdict"],
              "champion_before": gate["champion_version"], "forced": forced}  # fmt: skip
    if not gate["blessed"] and not forced:
        registry.audit(
            "refuse", version=version.version, champion=gate["champion_version"], failed_checks=failed
        )
        raise Skipped(
            f"gate refused v{version.version} ({', '.join(failed)}); it is the challenger, "
            f"the champion stays {_v(gate['champion_version'])}; see {layout.reports / 'gate.md'}"
        )
    why = reason or f"gate blessed run {trained['run_id']} ({len(gate['checks'])} checks)"
    registry.move_champion(
        version.version, gate["champion_version"], why, forced=forced,
        gate={"verdict": gate["verdict"], "report_uri": f"runs:/{trained['run_id']}/gate/gate.json"},
    )  # fmt: skip
    result["champion"] = version.version
    log.info("promote: v%s is champion (was %s)%s", version.version, _v(gate["champion_version"]),
             " [FORCED]" if forced and not gate["blessed"] else "")  # fmt: skip
    return result


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"
