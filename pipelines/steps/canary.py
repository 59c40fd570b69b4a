"""canary: end a canary, audited, through the promotion protocol (:mod:`pipelines.registry`).

    mlops canary promote --reason "..." [--expect V]   the canary becomes the champion
    mlops canary rollback --reason "..." [--expect V]  the canary is taken off and barred

A canary is a blessed (or forced) version answering ``canary.share`` of the traffic next to
the champion (``promote.to: canary`` puts it there; serving and ``score`` split the traffic
by flight, :mod:`pipelines.serving.split`). Graduating it is a ``promote`` move from the
champion of the moment to the canary, after the canary loaded and predicted in a fresh
process (I1), with the ``canary`` alias removed in the same recorded move; rolling it back
is a ``canary-rollback``: the alias is removed, the champion keeps all traffic, and the
version (and any identical rebuild of it) is barred from promotion unless forced, like a
rolled-back champion. ``--expect`` names the canary the operator saw (compare-and-set):
if another canary took its place meanwhile the command is refused (exit 3). Re-running a
finished command changes nothing and exits 0. ``evidence`` (a dict) goes into the record:
the deploy loop passes what it measured.
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines import faults
from pipelines.config import ConfigError, Params, Settings
from pipelines.errors import StepError
from pipelines.infra import admitted
from pipelines.registry import CHAMPION, CanaryMove, Move, Registry

log = logging.getLogger(__name__)


def _last_canary_move(registry: Registry, version: str, action: str) -> dict[str, Any] | None:
    return next((r for r in reversed(registry.audit_records())
                 if r.get("action") == action and version in (r.get("to"), r.get("from"))), None)  # fmt: skip


def _notify(title: str, reason: str, record: int, level: str) -> None:
    from pipelines.notify import make_notifier

    make_notifier().notify(title, {"reason": reason, "record": record}, level=level)


def _begin(
    settings: Settings, params: Params, wanted: str, expect: str | None, reason: str | None
) -> tuple[Registry, str | None, str]:
    """(the registry, the canary to act on or None when a re-run has nothing to do, the reason)."""
    cfg = {**params.section("canary"), **({"expect": expect} if expect is not None else {})}
    why = str(cfg["reason"] if reason is None else reason).strip()
    if not why:
        raise ConfigError(f"canary {wanted} needs a reason (--reason '...'): it goes into the audit trail")
    registry = Registry(settings, params.get("promote.model_name"))
    canary = _target(registry, cfg, wanted)
    if canary is None:
        _complete(registry)
    return registry, canary, why


def _complete(registry: Registry) -> None:
    """A re-run with nothing to move still completes what a killed run left (I2)."""
    with registry.lock():
        registry.recover()


def _target(registry: Registry, cfg: dict[str, Any], wanted: str) -> str | None:
    """The canary the command acts on (None: there is none, and the command already ran)."""
    expected = str(cfg["expect"]).strip().removeprefix("v")
    canary, _ = registry.canary()
    if expected and canary != expected:
        # a re-run after the move finished: the record says so, and it is a no-op
        action = "promote" if wanted == "promote" else "canary-rollback"
        done = _last_canary_move(registry, expected, action)
        if done is not None and canary is None:
            return None
        raise StepError(f"canary {wanted} refused: the canary is {'v' + canary if canary else 'none'}, "
                        f"not v{expected} as expected (--expect); see `mlops status`")  # fmt: skip
    if canary is None:
        ended = next((r for r in reversed(registry.audit_records()) if r.get("action") in ("canary", "canary-rollback")
                      or (r.get("action") == "promote" and r.get("canary"))), None)  # fmt: skip
        kind = None if ended is None else ("rollback" if ended["action"] == "canary-rollback" else "promote")
        if ended is not None and ended["action"] != "canary" and kind == wanted:
            log.info("canary %s: nothing to do, record %d already did it", wanted, ended["seq"])
            return None  # a re-run: the last canary ended this way
        raise StepError(f"canary {wanted}: model {registry.name!r} has no canary (see `mlops status`)")
    return canary


def graduate(
    settings: Settings,
    params: Params,
    evidence: dict[str, Any] | None = None,
    expect: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The canary becomes the champion (a ``promote`` move, ``canary`` set in its record)."""
    registry, canary, reason = _begin(settings, params, "promote", expect, reason)
    if canary is None:
        return {"changed": False, "champion": registry.aliases().get(CHAMPION), "canary": None}
    version = registry.get(canary)
    assert version is not None
    started = _last_canary_move(registry, canary, "canary") or {}
    timeout_s = float(params.get("promote.infra_timeout_s"))

    # checked in a fresh process first, unless the graduation is recorded already (a re-run
    # after a kill: its record holds the check that admitted it; the lock's recovery completes it)
    unfinished = registry.recorded_unfinished("promote", canary, canary=canary)
    infra = (
        None
        if unfinished
        else admitted(registry, canary, timeout_s, registry.aliases().get(CHAMPION), "canary promote")
    )
    if not unfinished:
        faults.point("canary-promote.infra-checked")
    with registry.lock():
        records = registry.recover()
        if unfinished and registry.aliases().get(CHAMPION) != canary:
            # the registry moved otherwise while this re-run waited for the lock: judge the move now
            infra = admitted(
                registry, canary, timeout_s, registry.aliases().get(CHAMPION), "canary promote", records
            )
        champion = registry.aliases().get(CHAMPION)
        outcome = registry.move_locked(Move("promote", canary, champion, reason, bool(started.get("forced")), {
            "canary": canary, "gate": started.get("gate"), "infra": infra,
            "fingerprint": version.tags.get("mlops.fingerprint", ""), "evidence": evidence or {},
        }), records)  # fmt: skip
    log.info("canary: v%s graduated to champion (was %s): %s", canary, champion, reason)
    if outcome.changed:
        _notify(
            f"canary v{canary} promoted to champion (was v{champion})", reason, outcome.record["seq"], "info"
        )
    return {
        "changed": outcome.changed,
        "champion": canary,
        "previous": champion,
        "record": outcome.record["seq"],
    }


def rollback(
    settings: Settings,
    params: Params,
    evidence: dict[str, Any] | None = None,
    expect: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The canary is taken off; the champion answers all traffic; the version is barred."""
    registry, canary, reason = _begin(settings, params, "rollback", expect, reason)
    if canary is None:
        return {"changed": False, "canary": None, "champion": registry.aliases().get(CHAMPION)}
    version = registry.get(canary)
    assert version is not None
    with registry.lock():
        records = registry.recover()
        outcome = registry.move_canary_locked(CanaryMove("canary-rollback", None, canary, reason, details={
            "fingerprint_from": version.tags.get("mlops.fingerprint", ""), "evidence": evidence or {},
        }), records)  # fmt: skip
    champion = registry.aliases().get(CHAMPION)
    log.info("canary: v%s rolled back, champion v%s keeps all traffic: %s", canary, champion, reason)
    if outcome.changed:
        _notify(f"canary v{canary} rolled back (champion v{champion} keeps all traffic)", reason,
                outcome.record["seq"], "warning")  # fmt: skip
    return {
        "changed": outcome.changed,
        "rolled_back": canary,
        "champion": champion,
        "record": outcome.record["seq"],
    }
