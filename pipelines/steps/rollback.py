"""rollback: move ``champion`` back, from the champion the operator saw to the one before it
(or a named version), audited.

A rollback is a move like a promotion (:mod:`pipelines.registry`): it takes the champion it
expects to replace (``--expect``, as ``mlops status`` shows it) and refuses with exit 3 if
the champion moved meanwhile, so a rollback started just after a promotion can never put
back the model it was meant to remove. The target must load and predict in a fresh process
first. The rolled-back model, and any rebuild identical to it, is then refused by the gate
until a forced promotion with a reason.
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines import faults
from pipelines.config import ConfigError, Params, Settings
from pipelines.errors import StepError
from pipelines.infra import admitted
from pipelines.registry import CHAMPION, Move, Registry, previous_champion

log = logging.getLogger(__name__)


def rollback(settings: Settings, params: Params) -> dict[str, Any]:
    cfg = params.section("rollback")
    reason = str(cfg["reason"]).strip()
    expected = str(cfg["expect"]).strip().removeprefix("v")
    target = str(cfg["to"] or "previous").strip().removeprefix("v")
    if not reason:
        raise ConfigError("rollback needs a reason (--reason '...'): it goes into the audit trail")
    if not expected:
        raise ConfigError(
            "rollback needs --expect VERSION: the champion you are replacing, as `mlops status` shows it "
            "(if it moved since, the rollback is refused instead of undoing the wrong model)"
        )
    registry = Registry(settings, params.get("promote.model_name"))
    if target == "previous":
        found = previous_champion(registry.audit_records(), expected)
        if found is None:
            raise StepError(
                f"the audit log knows no champion before v{expected} to roll back to (name one with --to VERSION)"
            )
        target = found
    if target == expected:
        raise ConfigError(f"--to v{target} is the champion you expect to replace: nothing to roll back")
    chosen, replaced = registry.get(target), registry.get(expected)
    if chosen is None:
        raise StepError(f"model {registry.name!r} has no version {target!r}")
    if replaced is None:
        raise StepError(f"model {registry.name!r} has no version {expected!r} (--expect)")

    timeout_s = float(params.get("promote.infra_timeout_s"))

    # the target loads and predicts in a fresh process first, unless there is nothing to move
    # or this rollback is recorded already (a re-run after a kill: its record holds the check
    # that admitted it, and the lock's recovery completes it)
    will_move = registry.aliases().get(CHAMPION) != target
    unfinished = will_move and registry.recorded_unfinished("rollback", target, **{"from": expected})
    infra: dict[str, Any] | None = None
    if will_move and not unfinished:
        infra = admitted(registry, target, timeout_s, expected, "rollback")
        faults.point("rollback.infra-checked")
    with registry.lock():
        faults.point("rollback.locked")
        records = registry.recover()
        if unfinished and registry.aliases().get(CHAMPION) != target:
            # the registry moved otherwise while this re-run waited for the lock: judge the move now
            infra = admitted(registry, target, timeout_s, expected, "rollback", records)
        outcome = registry.move_locked(Move("rollback", target, expected, reason, details={
            "infra": infra, "fingerprint_from": replaced.tags.get("mlops.fingerprint", ""),
            "fingerprint": chosen.tags.get("mlops.fingerprint", ""),
        }), records)  # fmt: skip
    if outcome.changed:
        log.info("rollback: champion v%s -> v%s (%s)", expected, target, reason)
        from pipelines.notify import make_notifier

        make_notifier().notify(f"rollback: champion v{expected} -> v{target}", {"reason": reason,
                               "record": outcome.record["seq"]}, level="warning")  # fmt: skip
    else:
        log.info("rollback: nothing to do, already rolled back v%s -> v%s (record %d)", expected, target,
                 outcome.record["seq"])  # fmt: skip
    return {"from": expected, "to": target, "reason": reason, "changed": outcome.changed,
            "record": outcome.record["seq"]}  # fmt: skip
