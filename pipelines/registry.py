"""Registry seam: one registered model in MLflow, moved by aliases (never stages), and the
promotion protocol that keeps its guarantees.

Aliases: ``challenger`` is the newest registered version; ``champion`` is the version in
production, and it moves only through :meth:`Registry.move`. ``canary``, when set, is a
candidate answering a share of the traffic (the registered-model tag ``mlops.canary_share``)
next to the champion; it moves only through :meth:`Registry.move_canary_locked`, under the
same lock, audit and recovery as the champion (I2-I4 hold for it too). A canary ends either
as the champion (a ``promote`` with ``canary`` set: the alias is removed with the move) or
rolled back (``canary-rollback``: the alias is removed and the version barred).

The protocol (docs/how-it-works.md, "The promotion protocol"):

- **I1** ``champion`` only points at a version that a gate blessed or a person forced with a
  reason (promote), or that a person chose with a reason (rollback), and that loaded and
  predicted in a fresh process before the move (:mod:`pipelines.infra`).
- **I2** Every alias move has exactly one complete audit record (:mod:`pipelines.audit`). The
  record is written *before* the alias moves; the alias, the version tags and the MLflow
  mirror follow. A crash leaves either nothing (before the record) or a recorded move whose
  effects the next mover completes (:meth:`Registry.recover`): nothing is half-done for
  longer than until the next promote or rollback, and nothing is recorded twice. The
  mirror is written last, so a move whose record is mirrored is complete: if the alias is
  later found back where that move started, a person moved it (recorded as ``external``),
  and it is not "completed" again.
- **I3** Two movers, on one host or many, never both succeed: each holds the registry lock
  (a Postgres advisory lock when scaled out, a file lock on one host) around compare-and-set
  (the champion must still be the one the caller expects) and the audit append, which is
  itself a conditional create. The loser gets :class:`RegistryConflict` (exit 3) and its
  refusal is recorded.
- **I4** Re-running a finished move is a no-op that exits 0: the champion is already the
  target and the last move record is this very move (the same action, from the expected
  champion to the target; an alias someone moved by hand to the same place is not it).

An alias moved outside mlops (the MLflow UI, a script) is found by the next mover, which
records it as an ``external`` move before doing anything else; ``mlops audit verify``
reports it the moment it happens.

Reads distinguish "absent" from "unreachable": a model or alias that does not exist is None;
a registry that does not answer raises :class:`RegistryUnavailable` (one line, in bounded time).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines import faults
from pipelines.audit import (
    CANARY_MOVES,
    MOVES,
    AuditLog,
    audited_champion,
    last_move,
    mirror_key,
    mirror_value,
)
from pipelines.config import ConfigError, Settings
from pipelines.errors import RegistryConflict, StepError
from pipelines.locks import HeldLock, file_lock, lock_timeout, named_lock
from pipelines.storage import LocalStore, ObjectStore, open_store
from pipelines.tracking import connect, describe_tracking_error

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
CANARY = "canary"
CANARY_SHARE_TAG = "mlops.canary_share"  # registered-model tag: the canary's share of the traffic
PREVIOUS_TAG = "mlops.previous_champion"
REGISTRY_LOCK_TIMEOUT_S = 120.0


class RegistryUnavailable(StepError):
    """The registry did not answer (or answered with an error); never read as "empty"."""


@dataclass
class Version:
    version: str
    run_id: str
    source: str
    aliases: list[str]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Move:
    """A requested move of ``champion`` from ``expected`` to ``target``."""

    action: str  # promote | rollback
    target: str
    expected: str | None
    reason: str
    forced: bool = False
    details: dict[str, Any] = field(default_factory=dict)  # gate, infra check, fingerprints


@dataclass
class MoveOutcome:
    changed: bool
    record: dict[str, Any]


class _Absent(Exception):
    pass


def audit_store(settings: Settings) -> ObjectStore:
    """Where the audit log lives: MLOPS_AUDIT_URI, else <store>/audit, else beside a SQLite
    registry. A tracking server with neither is a configuration error: every host must
    append to the same log."""
    if settings.audit_uri:
        return open_store(settings.audit_uri)
    if settings.store_uri:
        return open_store(settings.store_uri.rstrip("/") + "/audit")
    folder = settings.registry_dir
    if folder is not None:
        return LocalStore(folder / ".mlops" / "audit")
    raise ConfigError(
        f"the registry at {settings.mlflow_uri} is shared by every host: set MLOPS_AUDIT_URI "
        "(or MLOPS_STORE_URI) to a store they all reach, for the audit log"
    )


class Registry:
    def __init__(self, settings: Settings, model_name: str) -> None:
        self.settings = settings
        self.name = model_name
        self.client = connect(settings)
        self._audit: AuditLog | None = None

    # -- calls, with outages told apart from absence ------------------------------------------
    def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, absent: bool = False, **kwargs: Any
    ) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if absent and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise _Absent from None
            line = describe_tracking_error(self.settings, exc)
            if line is not None:
                raise RegistryUnavailable(line) from None
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.error_code
            raise RegistryUnavailable(
                f"the MLflow registry at {self.settings.mlflow_uri} refused to {what}: {first}"
            ) from None
        except OSError as exc:  # requests' connection errors, a missing SQLite folder
            raise RegistryUnavailable(f"the MLflow registry at {self.settings.mlflow_uri} is unreachable "
                                      f"({type(exc).__name__}: {str(exc)[:200]})") from None  # fmt: skip

    # -- reading -------------------------------------------------------------------------
    def model(self) -> Any | None:
        """The registered model (aliases and tags), or None if it does not exist yet."""
        try:
            return self._call("read the model", self.client.get_registered_model, self.name, absent=True)
        except _Absent:
            return None

    def aliases(self) -> dict[str, str]:
        model = self.model()
        return {k: str(v) for k, v in (model.aliases if model else {}).items()}

    def canary(self) -> tuple[str | None, float]:
        """The canary version (None when there is none) and its share of the traffic."""
        model = self.model()
        if model is None:
            return None, 0.0
        version = model.aliases.get(CANARY)
        return (str(version) if version else None), (canary_share(dict(model.tags)) if version else 0.0)

    def get(self, version: str | int) -> Version | None:
        try:
            mv = self._call(
                "read a version", self.client.get_model_version, self.name, str(version), absent=True
            )
        except _Absent:
            return None
        return _to_version(mv)

    def alias(self, alias: str) -> Version | None:
        version = self.aliases().get(alias)
        return self.get(version) if version else None

    def version_of_run(self, run_id: str) -> Version | None:
        found = self._call("search versions", self.client.search_model_versions,
                           f"name='{self.name}' and run_id='{run_id}'")  # fmt: skip
        return _to_version(found[0]) if found else None

    def model_uri(self, version: Version) -> str:
        return f"models:/{self.name}/{version.version}"

    def download_uri(self, version: str) -> str:
        """Where ``models:/<name>/<version>``'s artifact lives (what MLflow's loader resolves)."""
        return str(
            self._call("resolve a version", self.client.get_model_version_download_uri, self.name, version)
        )

    @property
    def audit_log(self) -> AuditLog:
        if self._audit is None:
            self._audit = AuditLog(audit_store(self.settings), self.name)
        return self._audit

    def audit_records(self) -> list[dict[str, Any]]:
        return self.audit_log.records()

    def mirror(self) -> dict[str, str] | None:
        model = self.model()
        return dict(model.tags) if model is not None else None

    def recorded_unfinished(self, action: str, target: str, **fields: Any) -> bool:
        """Whether the audit log's newest record is ``action`` to ``target`` (with these
        ``fields``: ``from``, ``share``) and the registry does not show it complete (its MLflow
        mirror is missing): what a mover killed after writing its record leaves, and the next
        mover completes (:meth:`recover`).
        Such a move was admitted when it was recorded (its record holds the infra check it
        passed), so a re-run completes it and does not judge it again. Read without the lock:
        a mover that relies on it confirms under the lock that the move is what happened.
        (Every record is appended under the lock after :meth:`recover`, so an unfinished move
        can only be the newest record.)"""
        records = self.audit_records()
        newest = records[-1] if records else {}
        if any(newest.get(k) != v for k, v in {"action": action, "to": target, **fields}.items()):
            return False
        return (self.mirror() or {}).get(mirror_key(newest["seq"])) != mirror_value(newest)

    # -- the lock --------------------------------------------------------------------------
    def lock(self) -> contextlib.AbstractContextManager[HeldLock]:
        timeout = lock_timeout(REGISTRY_LOCK_TIMEOUT_S)
        what = f"registry ({self.name})"
        if self.settings.lock_uri:
            return named_lock(self.settings.lock_uri, f"mlops-registry/{self.name}", what, timeout)
        folder = self.settings.registry_dir
        if folder is None:
            raise ConfigError(
                f"moving an alias of the shared registry at {self.settings.mlflow_uri} needs a lock every "
                "host takes: set MLOPS_LOCK_URI=postgresql://... (or file:///dir for this host only)"
            )
        return file_lock(folder / ".mlops" / "locks" / f"registry-{self.name}.lock", what, timeout)

    # -- writing -------------------------------------------------------------------------
    def describe(self, version: str, text: str) -> None:
        """Set a version's description (Markdown, shown on its page in the MLflow UI)."""
        self._call(
            "describe a version", self.client.update_model_version, self.name, version, description=text
        )

    def register(self, model_uri: str, run_id: str, tags: dict[str, str]) -> tuple[Version, bool]:
        """Register ``model_uri`` (once per run) and point ``challenger`` at it. Returns the
        version and whether it is new. The audit record is written by the caller, under the
        lock (see promote)."""
        import mlflow

        existing = self.version_of_run(run_id)
        created = existing is None
        if existing is None:
            mv = self._call("register the model", mlflow.register_model, model_uri, self.name, tags=tags)
            existing = self.get(mv.version)
            assert existing is not None
        else:
            for key, value in tags.items():
                self._call(
                    "tag a version",
                    self.client.set_model_version_tag,
                    self.name,
                    existing.version,
                    key,
                    value,
                )
        self._call(
            "set the challenger",
            self.client.set_registered_model_alias,
            self.name,
            CHALLENGER,
            existing.version,
        )
        return existing, created

    def record(
        self, action: str, fields: dict[str, Any], head: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Append a record (caller holds the lock) and mirror it into MLflow; a move's record
        is mirrored by :meth:`_apply`, once the alias has moved (the mirror marks a move complete)."""
        record = self.audit_log.append(action, {**fields, "actor": self.settings.actor_record()}, head)
        faults.point(f"audit.{action}.appended")
        if action not in ("promote", "rollback", *CANARY_MOVES):
            self._mirror(record)
        return record

    def refuse_infra(self, version: str, champion: str | None, wanted: str, reason: str) -> None:
        """Record that ``version`` failed its infra check before a move (takes the lock)."""
        with self.lock():
            self.refuse_infra_locked(self.recover(), version, champion, wanted, reason)

    def refuse_infra_locked(
        self, records: list[dict[str, Any]], version: str, champion: str | None, wanted: str, reason: str
    ) -> None:
        """:meth:`refuse_infra` for a caller that holds the lock and passes :meth:`recover`'s records."""
        fields = {"version": version, "champion": champion, "wanted": wanted, "reason": reason}
        self.record("infra-refused", fields, records[-1] if records else None)

    def _mirror(self, record: dict[str, Any]) -> None:
        self._call("mirror the audit record", self.client.set_registered_model_tag, self.name,
                   mirror_key(record["seq"]), mirror_value(record))  # fmt: skip

    def _apply(self, record: dict[str, Any]) -> None:
        """Make a recorded move true: the alias, the version tags, the MLflow mirror (in this
        order; the mirror last, so its presence means the move is complete). Idempotent."""
        action, target, previous = record["action"], record["to"], record.get("from")
        if target is not None:
            self._call(
                "move the champion", self.client.set_registered_model_alias, self.name, CHAMPION, target
            )
        faults.point(f"{action}.alias-set")
        tags: dict[str, str] = {
            "mlops.champion_record": str(record["seq"]),
            "mlops.champion_since": record["at"],
        }
        if action == "promote":
            gate = record.get("gate") or {}
            tags.update({
                PREVIOUS_TAG: previous or "", "mlops.promoted_at": record["at"],
                "mlops.promoted_by": record["actor"]["name"], "mlops.promotion_reason": record.get("reason", ""),
                "mlops.forced": str(bool(record.get("forced"))).lower(),
                "mlops.gate_verdict": gate.get("verdict", ""), "mlops.gate_report": gate.get("report", ""),
            })  # fmt: skip
        for key, value in tags.items():
            if target is not None:
                self._call(
                    "tag the champion", self.client.set_model_version_tag, self.name, target, key, value
                )
        if action == "rollback" and previous is not None:
            for key, value in {"mlops.rolled_back_at": record["at"], "mlops.rolled_back_reason": record.get("reason", ""),
                               "mlops.rolled_back_record": str(record["seq"])}.items():  # fmt: skip
                self._call("tag the rolled-back version", self.client.set_model_version_tag, self.name,
                           previous, key, value)  # fmt: skip
        if action == "promote" and record.get("canary") == target:  # the canary graduated
            self._clear_canary(target)
        faults.point(f"{action}.tagged")
        self._mirror(record)
        faults.point(f"{action}.mirrored")

    def _clear_canary(self, version: str | None) -> None:
        """Remove the ``canary`` alias if it still points at ``version``; the share goes to 0."""
        model = self.model()
        if model is not None and version is not None and str(model.aliases.get(CANARY, "")) == version:
            self._call("remove the canary", self.client.delete_registered_model_alias, self.name, CANARY)
        self._call(
            "set the canary share", self.client.set_registered_model_tag, self.name, CANARY_SHARE_TAG, "0"
        )

    def _apply_canary(self, record: dict[str, Any]) -> None:
        """Make a recorded canary move true (alias, share, version tags, then the mirror). Idempotent."""
        action, target, previous = record["action"], record.get("to"), record.get("from")
        if action == "canary":
            self._call("move the canary", self.client.set_registered_model_alias, self.name, CANARY, target)
            faults.point("canary.alias-set")
            self._call("set the canary share", self.client.set_registered_model_tag, self.name,
                       CANARY_SHARE_TAG, str(record["share"]))  # fmt: skip
            for key, value in {
                "mlops.canary_since": record["at"],
                "mlops.canary_record": str(record["seq"]),
            }.items():
                self._call("tag the canary", self.client.set_model_version_tag, self.name, target, key, value)
        else:  # canary-rollback
            self._clear_canary(previous)
            faults.point("canary-rollback.alias-set")
            for key, value in {"mlops.rolled_back_at": record["at"], "mlops.rolled_back_reason": record.get("reason", ""),
                               "mlops.rolled_back_record": str(record["seq"])}.items():  # fmt: skip
                self._call("tag the rolled-back canary", self.client.set_model_version_tag, self.name,
                           previous, key, value)  # fmt: skip
        faults.point(f"{action}.tagged")
        self._mirror(record)
        faults.point(f"{action}.mirrored")

    def recover(self) -> list[dict[str, Any]]:
        """Before any move (lock held): finish what a killed mover left, and record an alias
        that moved outside mlops. Returns the records, including any it added."""
        records = self.audit_log.records()
        model = self.model()
        mirror = dict(model.tags) if model is not None else {}
        champion = str(model.aliases[CHAMPION]) if model is not None and CHAMPION in model.aliases else None
        move = last_move(records)
        audited = audited_champion(records)
        # a move is complete once its record is mirrored (the last thing a mover writes): an
        # alias back at the move's start *after* that was moved by hand, not left behind
        completed = move is not None and mirror.get(mirror_key(move["seq"])) == mirror_value(move)
        if move is not None and champion != audited and champion == move.get("from") and not completed:
            log.warning("registry %s: record %d (%s %s -> %s) was not completed by the process that wrote it; "
                        "completing it now", self.name, move["seq"], move["action"], move.get("from"), move["to"])  # fmt: skip
            faults.point("recover.completing")
            self._apply(move)
            mirror[mirror_key(move["seq"])] = mirror_value(move)
        elif champion != audited:
            log.warning("registry %s: champion is %s but the audit log says %s: recording a move made outside mlops",
                        self.name, champion, audited)  # fmt: skip
            records.append(self.record("external", {
                "from": audited, "to": champion,
                "reason": "the champion alias was moved outside mlops; found by the next mover",
            }, records[-1] if records else None))  # fmt: skip
            return records
        if records and mirror.get(mirror_key(records[-1]["seq"])) != mirror_value(records[-1]):
            newest = records[-1]
            log.warning("registry %s: audit record %d was not mirrored into MLflow; mirroring it",
                        self.name, newest["seq"])  # fmt: skip
            if newest.get("action") in MOVES and newest.get("to") == champion:
                self._apply(newest)
            elif newest.get("action") in CANARY_MOVES:
                self._apply_canary(newest)
            else:
                self._mirror(newest)
        return records

    def move(
        self, request: Move, precheck: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> MoveOutcome:
        """Take the lock, complete what a killed mover left, then :meth:`move_locked`."""
        with self.lock():
            faults.point(f"{request.action}.locked")
            return self.move_locked(request, self.recover(), precheck)

    def move_locked(
        self,
        request: Move,
        records: list[dict[str, Any]],
        precheck: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> MoveOutcome:
        """Move ``champion`` from ``request.expected`` to ``request.target`` (the protocol above);
        the caller holds the lock and passes the records :meth:`recover` returned.

        ``precheck(records)``, after compare-and-set, may refuse the move by raising (it records
        its own refusal). Raises :class:`RegistryConflict` if the champion is not the expected one.
        """
        champion = self.aliases().get(CHAMPION)
        done = last_move(records)
        if (champion == request.target and done is not None and done.get("action") == request.action
                and done.get("to") == request.target and done.get("from") == request.expected):  # fmt: skip
            return MoveOutcome(False, done)
        if champion == request.target and request.action == "promote" and done is not None:
            return MoveOutcome(False, done)  # already the champion (however it got there): nothing to move
        head = records[-1] if records else None
        if champion != request.expected:
            self.record("conflict", {
                "wanted": request.action, "to": request.target, "expected": request.expected,
                "found": champion, "reason": request.reason,
            }, head)  # fmt: skip
            raise RegistryConflict(
                f"{request.action} refused: the champion is {_v(champion)}, not {_v(request.expected)} as "
                f"expected (it moved since {'the gate evaluated' if request.action == 'promote' else 'you looked'})"
                + ("; re-run `mlops evaluate` before promoting" if request.action == "promote"
                   else "; check `mlops status` and roll back with --expect set to the current champion")
            )  # fmt: skip
        if precheck is not None:
            precheck(records)  # returns only when it lets the move through (nothing appended)
        record = self.record(request.action, {
            "from": request.expected, "to": request.target, "reason": request.reason,
            "forced": request.forced, **request.details,
        }, head)  # fmt: skip
        faults.point(f"{request.action}.recorded")
        self._apply(record)
        return MoveOutcome(True, record)

    def move_canary_locked(
        self,
        request: CanaryMove,
        records: list[dict[str, Any]],
        precheck: Callable[[list[dict[str, Any]]], None] | None = None,
        champion: str | Literal["any"] | None = "any",
    ) -> MoveOutcome:
        """Move ``canary`` as :meth:`move_locked` moves ``champion``: the caller holds the lock
        and passes :meth:`recover`'s records; compare-and-set on the canary the caller expects
        (:class:`RegistryConflict` otherwise, recorded), and on the champion when ``champion``
        names the one the caller expects; a re-run of a finished move is a no-op."""
        aliases = self.aliases()  # one read: the canary and the champion as they are now
        canary, expected_champion, champion = aliases.get(CANARY), champion, aliases.get(CHAMPION)
        done = next((r for r in reversed(records) if r.get("action") in CANARY_MOVES), None)
        if (canary == request.target and done is not None and done.get("action") == request.action
                and done.get("to") == request.target
                and (request.action != "canary" or done.get("share") == request.share)):  # fmt: skip
            return MoveOutcome(False, done)
        head = records[-1] if records else None
        problem = None
        if expected_champion != "any" and champion != expected_champion:
            problem = (
                f"the champion is {_v(champion)}, not {_v(expected_champion)} as the gate compared against"
            )
        elif canary != request.expected:
            problem = f"the canary is {_v(canary)}, not {_v(request.expected)} as expected"
        elif request.action == "canary" and champion is None:
            problem = "there is no champion to share the traffic with (promote one first)"
        elif request.action == "canary" and request.target == champion:
            problem = f"v{request.target} is the champion already"
        if problem is not None:
            self.record("conflict", {"wanted": request.action, "to": request.target, "expected": request.expected,
                                     "found": canary, "reason": request.reason, "problem": problem}, head)  # fmt: skip
            raise RegistryConflict(f"{request.action} refused: {problem}; check `mlops status`")
        if precheck is not None:
            precheck(records)
        fields: dict[str, Any] = {"from": request.expected, "to": request.target, "reason": request.reason,
                                  "champion": champion, **request.details}  # fmt: skip
        if request.action == "canary":
            fields["share"] = request.share
        record = self.record(request.action, fields, head)
        faults.point(f"{request.action}.recorded")
        self._apply_canary(record)
        return MoveOutcome(True, record)


@dataclass
class CanaryMove:
    """A requested move of ``canary``: ``canary`` puts ``target`` on ``share`` of the traffic
    (replacing ``expected``, the canary the caller saw, or none); ``canary-rollback`` takes
    ``expected`` off (``target`` None)."""

    action: str  # canary | canary-rollback
    target: str | None
    expected: str | None
    reason: str
    share: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def canary_share(tags: dict[str, str]) -> float:
    """The share a registered model's tags give its canary (0 when unset or unreadable)."""
    try:
        share = float(tags.get(CANARY_SHARE_TAG, "0"))
    except ValueError:
        return 0.0
    return share if 0.0 < share < 1.0 else 0.0


def previous_champion(records: list[dict[str, Any]], version: str) -> str | None:
    """The champion before ``version`` was promoted (the latest promote to it), or before the
    latest move to it of any kind; None if the log knows none."""
    moves = [r for r in records if r.get("action") in MOVES and r.get("to") == version]
    promotes = [r for r in moves if r.get("action") == "promote"]
    chosen = (promotes or moves)[-1] if (promotes or moves) else None
    return chosen.get("from") if chosen else None


def rolled_back(
    records: list[dict[str, Any]], fingerprint: str, version: str | None = None
) -> dict[str, Any] | None:
    """The rollback record that still bars this model, or None. A rolled-back version, and any
    new version with the same fingerprint (same data version, parameters and code), stays
    barred until a forced promotion of that fingerprint (or version) with a reason."""
    barring: dict[str, Any] | None = None
    for record in records:
        action = record.get("action")
        if action in ("rollback", "canary-rollback") and (
            (fingerprint and record.get("fingerprint_from") == fingerprint)
            or (version is not None and record.get("from") == version)
        ):
            barring = record
        elif (
            action == "promote"
            and record.get("forced")
            and ((fingerprint and record.get("fingerprint") == fingerprint) or record.get("to") == version)
        ):
            barring = None
    return barring


def _to_version(mv: Any) -> Version:
    return Version(
        version=str(mv.version), run_id=mv.run_id or "", source=mv.source or "",
        aliases=list(mv.aliases or []), tags=dict(mv.tags or {}),
    )  # fmt: skip


def _v(version: str | None) -> str:
    return f"v{version}" if version else "no champion"


def describe(record: dict[str, Any]) -> str:
    """One line for a record (status and audit commands)."""
    actor = record.get("actor") or {}
    who = f"{actor.get('name', '?')} via {actor.get('source', '?')}"
    action = record.get("action")
    if action in MOVES:
        what = f"{_v(record.get('from'))} -> {_v(record.get('to'))}"
        if action == "promote" and record.get("canary"):
            what += " (the canary graduated)"
    elif action == "canary":
        was = f"v{record['from']}" if record.get("from") else "none"
        what = f"{_v(record.get('to'))} on {float(record.get('share', 0)):.0%} of traffic next to champion {_v(record.get('champion'))} (canary was {was})"
    elif action == "canary-rollback":
        what = f"{_v(record.get('from'))} taken off (champion {_v(record.get('champion'))} keeps all traffic)"
    elif action == "register":
        what = f"v{record.get('version')} (run {str(record.get('run_id', ''))[:8]})"
    elif action == "conflict":
        what = f"{record.get('wanted')} to {_v(record.get('to'))} expected {_v(record.get('expected'))}, found {_v(record.get('found'))}"
    else:
        what = f"v{record.get('version')}"
    why = record.get("reason") or record.get("detail") or ""
    extra = " [forced]" if record.get("forced") else ""
    return f"#{record.get('seq')} {record.get('at')} {action:<13} {what}{extra} by {who}" + (
        f": {why}" if why else ""
    )
