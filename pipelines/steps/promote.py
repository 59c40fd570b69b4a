"""promote: consume the gate report (never re-decide) and act on the registry.

The blessing is read from the workspace (``reports/gate.json`` + ``reports/train.json``, what
``dvc repro`` just wrote) or, with ``--run RUN_ID``, from that MLflow run's ``gate/``
artifacts (what a retrain on any host logged; Airflow passes the retrain's run id).

The trained model is registered (once per run) and becomes ``challenger``. Then, under the
registry lock (:mod:`pipelines.registry`): the registration is recorded; a refused gate is
recorded and exits 99 (downstream skipped); a model identical to one that was rolled back
is refused the same way unless forced; otherwise ``champion`` moves from the champion the
gate evaluated against to the new version, after the version loaded and predicted in a fresh
process (:mod:`pipelines.infra`). Re-running a finished promotion changes nothing and exits 0.

With ``promote.to: canary`` the blessed (or forced) version goes to the ``canary`` alias on
``canary.share`` of the traffic instead, next to the champion the gate compared against
(which must still be the champion); ``mlops canary promote|rollback`` ends it
(:mod:`pipelines.steps.canary`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import faults
from pipelines.config import Params, Settings
from pipelines.errors import Skipped, StepError
from pipelines.infra import InfraRefused, check, recorded
from pipelines.layout import Layout
from pipelines.registry import CANARY, CHAMPION, CanaryMove, Move, Registry, rolled_back

log = logging.getLogger(__name__)


def load_blessing(
    settings: Settings, layout: Layout, run_id: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(gate report, train summary): from the workspace, or from an MLflow run's artifacts."""
    if not run_id:
        try:
            gate = json.loads((layout.reports / "gate.json").read_text())
            trained = json.loads((layout.reports / "train.json").read_text())
        except FileNotFoundError as exc:
            raise StepError(
                f"promote needs the gate report: {exc.filename} is missing (run evaluate)"
            ) from None
        return gate, trained
    import tempfile

    import mlflow

    from pipelines.registry import RegistryUnavailable
    from pipelines.tracking import connect, describe_tracking_error

    connect(settings)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="gate", dst_path=tmp)
            )
            gate = json.loads((folder / "gate.json").read_text())
            trained = json.loads((folder / "train.json").read_text())
        except FileNotFoundError as exc:
            raise StepError(f"run {run_id} has no gate report ({Path(exc.filename or '').name} missing "
                            "under its gate/ artifacts): was it evaluated?") from None  # fmt: skip
        except Exception as exc:
            line = describe_tracking_error(settings, exc)
            if line is not None:
                raise RegistryUnavailable(line) from None
            raise StepError(f"cannot read the gate report of run {run_id}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None  # fmt: skip
    return gate, trained


@dataclass
class Candidate:
    """An evaluated model, registered: what register and promote act on."""

    registry: Registry
    version: str
    gate: dict[str, Any]
    trained: dict[str, Any]
    failed: list[str]
    fingerprint: str

    @property
    def gate_info(self) -> dict[str, Any]:
        return {"run_id": self.trained["run_id"], "verdict": self.gate["verdict"], "failed_checks": self.failed,
                "report": f"runs:/{self.trained['run_id']}/gate/gate.json", "evaluated_at": self.gate["evaluated_at"]}  # fmt: skip


def registered_candidate(settings: Settings, params: Params, layout: Layout, run_id: str | None) -> Candidate:
    """Read the blessing, register the model (once per run) as ``challenger``."""
    gate, trained = load_blessing(settings, layout, run_id)
    if gate["run_id"] != trained["run_id"] or (run_id and gate["run_id"] != run_id):
        raise StepError(
            f"the gate report is for run {gate['run_id']} but the trained model is run "
            f"{run_id or trained['run_id']}: re-run `mlops evaluate`"
        )
    registry = Registry(settings, params.get("promote.model_name"))
    failed = [c["name"] for c in gate["checks"] if c["verdict"] == "fail"]
    fingerprint = trained.get("fingerprint", "")
    version, _ = registry.register(
        trained["model_uri"], trained["run_id"],
        tags={
            "mlops.data_version": trained["data_version"],
            "mlops.window": f"{trained['window_start']}..{trained['window_end']}",
            "mlops.fingerprint": fingerprint,
            "mlops.gate_verdict": gate["verdict"],
            "mlops.gate_failed_checks": ", ".join(failed)[:4000],
            "mlops.holdout_roc_auc": f"{gate['challenger']['roc_auc']:.5f}",
            "mlops.holdout_brier": f"{gate['challenger']['brier']:.5f}",
            "mlops.gate_report": f"runs:/{trained['run_id']}/gate/gate.json",
        },
    )  # fmt: skip
    describe_version(registry, version.version, layout, trained["run_id"])
    return Candidate(registry, version.version, gate, trained, failed, fingerprint)


def describe_version(registry: Registry, version: str, layout: Layout, run_id: str) -> None:
    """The model card's summary as the version's description (the MLflow UI shows it on the
    version's page): from the workspace's card when it is this run's, else from the run."""
    from pipelines import card

    try:
        local = layout.reports / "model_card.json"
        found = json.loads(local.read_text()) if local.exists() else None
        if not found or found.get("run_id") != run_id:
            import mlflow

            found = mlflow.artifacts.load_dict(f"runs:/{run_id}/gate/model_card.json")
    except Exception as exc:  # a run evaluated before model cards existed: no description
        log.warning(
            "promote: no model card for run %s (%s): version %s has no description", run_id, exc, version
        )
        return
    registry.describe(version, card.description(found))


def record_verdict(candidate: Candidate, records: list[dict[str, Any]], expected: str | None) -> None:
    """Under the lock: the registration, and a refused gate's refusal (once each)."""
    registry, version = candidate.registry, candidate.version
    if not any(r.get("action") == "register" and r.get("version") == version for r in records):
        records.append(registry.record("register", {"version": version, "run_id": candidate.trained["run_id"],
                                                    "fingerprint": candidate.fingerprint}, records[-1] if records else None))  # fmt: skip
    refused_before = any(r.get("action") == "refuse" and r.get("version") == version
                         and (r.get("gate") or {}).get("run_id") == candidate.trained["run_id"] for r in records)  # fmt: skip
    if not candidate.gate["blessed"] and not refused_before:
        records.append(registry.record("refuse", {"version": version, "champion": expected, "gate": candidate.gate_info,
                                                  "reason": f"gate refused: {', '.join(candidate.failed)}"}, records[-1]))  # fmt: skip


def register(settings: Settings, params: Params, run_id: str) -> dict[str, Any]:
    """``mlops register``: the evaluated model becomes the challenger; the audit log records
    the registration and, if the gate refused it, the refusal. Moves nothing."""
    layout = Layout.of(settings, params.get("validate.store"))
    candidate = registered_candidate(settings, params, layout, run_id)
    with candidate.registry.lock():
        records = candidate.registry.recover()
        record_verdict(candidate, records, candidate.gate["champion_version"])
    log.info("register: v%s is the challenger (gate %s)", candidate.version, candidate.gate["verdict"])
    return {"version": candidate.version, "run_id": run_id, "verdict": candidate.gate["verdict"],
            "failed_checks": candidate.failed, "challenger": candidate.version}  # fmt: skip


def promote_if_blessed(settings: Settings, params: Params, run_id: str | None = None) -> dict[str, Any]:
    layout = Layout.of(settings, params.get("validate.store"))
    cfg = params.section("promote")
    forced, reason = (
        bool(cfg["force"]),
        str(cfg["reason"]).strip(),
    )  # force needs a reason: the settings schema
    named = str(cfg.get("expect", "")).strip().removeprefix("v")  # with force only (the settings schema)
    candidate = registered_candidate(settings, params, layout, run_id)
    registry, gate, trained, failed, fingerprint = (candidate.registry, candidate.gate, candidate.trained,
                                                    candidate.failed, candidate.fingerprint)  # fmt: skip
    version = registry.get(candidate.version)
    assert version is not None
    faults.point("promote.registered")
    # the champion this move replaces: the one the gate compared against, or, for a forced
    # promotion, the one the person forcing it names (compare-and-set either way)
    expected = (None if named == "none" else named) if named else gate["champion_version"]
    gate_info = candidate.gate_info
    to_canary = cfg["to"] == "canary"
    result = {"version": version.version, "run_id": trained["run_id"], "verdict": gate["verdict"],
              "champion_before": expected, "forced": forced, "changed": False, "to": cfg["to"]}  # fmt: skip

    # infra validation before taking the lock (it takes seconds); skipped when there is
    # nothing to move (refused, or already the champion: a re-run), and when this move is
    # recorded already (a re-run after a kill: the record holds the check that admitted it,
    # and the lock's recovery completes it)
    aliases = registry.aliases()
    slot = CANARY if to_canary else CHAMPION
    will_move = (gate["blessed"] or forced) and aliases.get(CHAMPION) != version.version
    if to_canary:
        will_move = will_move and aliases.get(CANARY) != version.version
    share = float(params.get("canary.share")) if to_canary else None
    unfinished = will_move and (
        registry.recorded_unfinished("canary", version.version, share=share)
        if to_canary
        else registry.recorded_unfinished("promote", version.version)
    )
    infra: dict[str, Any] | None = None
    infra_error: InfraRefused | None = None
    if will_move and not unfinished:
        infra, infra_error = _infra(registry, version.version, cfg)
        faults.point("promote.infra-checked")

    with registry.lock():
        faults.point("promote.locked")
        records = registry.recover()
        if unfinished and registry.aliases().get(slot) != version.version:
            # the registry moved otherwise while this re-run waited for the lock: judge the move now
            infra, infra_error = _infra(registry, version.version, cfg)
        record_verdict(candidate, records, expected)  # the registration, and a refusal of the gate, once
        if not gate["blessed"] and not forced:
            raise Skipped(
                f"gate refused v{version.version} ({', '.join(failed)}); it is the challenger, "
                f"the champion stays {_v(expected)}; see {layout.reports / 'gate.md'}"
            )
        if infra_error is not None:
            registry.record("infra-refused", {"version": version.version, "champion": expected,
                                              "reason": str(infra_error)}, records[-1])  # fmt: skip
            raise infra_error

        def not_rolled_back(current: list[dict[str, Any]]) -> None:
            if forced:
                return
            match = rolled_back(current, fingerprint, version.version)
            if match is None:
                return
            registry.record("refuse", {"version": version.version, "champion": expected, "gate": gate_info,
                                       "check": "not a rolled-back model",
                                       "reason": _rolled_back_reason(version.version, match)}, current[-1])  # fmt: skip
            raise Skipped(
                f"{_rolled_back_reason(version.version, match)}; promote with --force --reason to override"
            )

        why = reason or f"gate blessed run {trained['run_id']} ({len(gate['checks'])} checks)"
        if share is not None:
            canary_outcome = registry.move_canary_locked(
                CanaryMove("canary", version.version, registry.canary()[0], why, share,
                           {"gate": gate_info, "infra": infra, "fingerprint": fingerprint, "forced": forced}),
                records, precheck=not_rolled_back, champion=expected,
            )  # fmt: skip
            result.update(canary=version.version, share=share, champion=registry.aliases().get(CHAMPION),
                          changed=canary_outcome.changed, record=canary_outcome.record["seq"])  # fmt: skip
            log.info("promote: v%s is the canary on %.0f%% of traffic next to champion %s%s", version.version,
                     share * 100, _v(expected), "" if canary_outcome.changed else " (already)")  # fmt: skip
            if canary_outcome.changed:
                _notify(f"v{version.version} is the canary on {share:.0%} of traffic next to champion {_v(expected)}",
                        result)  # fmt: skip
            return result
        outcome = registry.move_locked(
            Move("promote", version.version, expected, why, forced,
                 {"gate": gate_info, "infra": infra, "fingerprint": fingerprint}),
            records, precheck=not_rolled_back,
        )  # fmt: skip
    result.update(champion=version.version, changed=outcome.changed, record=outcome.record["seq"])
    if outcome.changed:
        log.info("promote: v%s is champion (was %s)%s", version.version, _v(expected),
                 " [FORCED]" if forced and not gate["blessed"] else "")  # fmt: skip
        _notify(f"v{version.version} promoted to champion (was {_v(expected)})"
                + (" [FORCED]" if forced and not gate["blessed"] else ""), result)  # fmt: skip
    else:
        log.info("promote: nothing to do, v%s is already the champion (record %d, %s by %s)", version.version,
                 outcome.record["seq"], outcome.record["at"], outcome.record["actor"]["name"])  # fmt: skip
    return result


def _infra(
    registry: Registry, version: str, cfg: dict[str, Any]
) -> tuple[dict[str, Any] | None, InfraRefused | None]:
    """The infra check's record, or its refusal (raised once the refusal is recorded, under the lock)."""
    try:
        return recorded(check(registry, version, float(cfg["infra_timeout_s"]))), None
    except InfraRefused as exc:
        return None, exc


def _notify(title: str, result: dict[str, Any]) -> None:
    from pipelines.notify import make_notifier

    make_notifier().notify(title, result, level="info")


def _rolled_back_reason(version: str, record: dict[str, Any]) -> str:
    return (f"v{version} is the model rolled back from v{record.get('from')} by record {record.get('seq')} "
            f"({record.get('reason')}): same data version, parameters and code")  # fmt: skip


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"
