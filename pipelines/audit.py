"""The registry's audit log: append-only, hash-chained, stored with the data.

One object per record, ``<model>/<seq:010d>.json``, in an object store (S3 when scaled out:
``MLOPS_AUDIT_URI``, default ``<MLOPS_STORE_URI>/audit``; a folder beside the SQLite
registry on the embedded default). Each record carries ``prev``, the hash of the record
before it, and ``hash``, the SHA-256 of its own canonical JSON (without ``hash``), so an
edited, removed or reordered record breaks the chain.

Appending is a compare-and-set: record N+1 is created only if no record N+1 exists
(:meth:`pipelines.storage.ObjectStore.put_bytes_if_absent`: S3's ``If-None-Match: *``, a
hard link locally). Appends happen under the registry lock, so this never fails in normal
use; if two hosts were misconfigured with separate locks, the second writer of N+1 is
refused instead of forking the history.

Each record is mirrored into MLflow as the registered-model tag ``audit.<seq>`` so the
MLflow UI shows the trail; the log, not the mirror, is the authority, and
:func:`verify` reports any difference between them.

Actions: ``register`` (a new version); the moves ``promote``, ``rollback`` and ``external``
(an alias move made outside mlops, found and recorded by the next mover); the canary's moves
``canary`` (a version takes a share of the traffic) and ``canary-rollback`` (it is taken off,
and barred like a rolled-back champion; a canary that graduates is a ``promote`` with
``canary`` set); and the refusals
``refuse`` (the gate), ``conflict`` (compare-and-set) and ``infra-refused`` (the candidate
did not load and predict).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import RegistryConflict
from pipelines.storage import ObjectStore

log = logging.getLogger(__name__)

MOVES = ("promote", "rollback", "external")  # moves of `champion`
CANARY_MOVES = ("canary", "canary-rollback")  # moves of `canary` (a share of the traffic)
REFUSALS = ("refuse", "conflict", "infra-refused")
MIRROR_PREFIX = "audit."
_KEY_DIGITS = 10


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def mirror_key(seq: int) -> str:
    return f"{MIRROR_PREFIX}{seq:06d}"


def mirror_value(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


class AuditLog:
    """The records of one registered model."""

    def __init__(self, store: ObjectStore, model: str) -> None:
        self.store, self.model = store, model

    @property
    def where(self) -> str:
        return self.store.url(self.model)

    def _key(self, seq: int) -> str:
        return f"{self.model}/{seq:0{_KEY_DIGITS}d}.json"

    def seqs(self) -> list[int]:
        found = []
        for key in self.store.keys(f"{self.model}/"):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".json") and name[:-5].isdigit():
                found.append(int(name[:-5]))
        return sorted(found)

    def read(self, seq: int) -> dict[str, Any]:
        return dict(json.loads(self.store.get_bytes(self._key(seq))))

    def records(self) -> list[dict[str, Any]]:
        """Every record as stored, in sequence order (unverified: see :func:`verify`)."""
        return [self.read(seq) for seq in self.seqs()]

    def head(self) -> dict[str, Any] | None:
        seqs = self.seqs()
        return self.read(seqs[-1]) if seqs else None

    def append(
        self, action: str, fields: dict[str, Any], head: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the next record after ``head`` (read now if not given). Raises
        :class:`RegistryConflict` if another writer created that record first."""
        head = self.head() if head is None else head
        seq = (head["seq"] + 1) if head else 1
        record: dict[str, Any] = {"seq": seq, "prev": head["hash"] if head else None, "model": self.model,
                                  "action": action, "at": now(), **fields}  # fmt: skip
        record["hash"] = digest(record)
        data = json.dumps(record, indent=1, sort_keys=True, default=str).encode()
        if not self.store.put_bytes_if_absent(self._key(seq), data):
            raise RegistryConflict(
                f"audit record {seq} of {self.model!r} was written by another process at the same "
                f"time ({self.where}): nothing moved; is every host using the same MLOPS_LOCK_URI?"
            )
        log.info("audit %s #%d %s", self.model, seq, json.dumps({k: v for k, v in record.items()
                                                                  if k not in ("prev", "hash")}, default=str))  # fmt: skip
        return record


def last_move(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in reversed(records) if r.get("action") in MOVES), None)


def audited_champion(records: list[dict[str, Any]]) -> str | None:
    """The champion the log says the registry has: the target of the last move."""
    move = last_move(records)
    return move.get("to") if move else None


@dataclass
class Verification:
    records: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    champion_alias: str | None = None
    champion_audited: str | None = None
    canary_alias: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            state = (
                f"champion {_v(self.champion_alias)}"
                + (f", canary {_v(self.canary_alias)}" if self.canary_alias else "")
                + " as recorded"
            )
            return (
                f"audit log verified: {self.records} record(s), chain intact, MLflow mirror in sync, {state}"
            )
        return f"audit log: {len(self.problems)} problem(s): " + "; ".join(self.problems)


def audited_canary(records: list[dict[str, Any]]) -> str | None:
    """The canary the log says the registry has: set by ``canary``, removed by
    ``canary-rollback`` or by the promotion of the canary."""
    for record in reversed(records):
        if record.get("action") == "canary":
            return record.get("to")
        if record.get("action") == "canary-rollback" or (
            record.get("action") == "promote" and record.get("canary")
        ):
            return None
    return None


def verify(
    records: list[dict[str, Any]],
    mirror: dict[str, str] | None,
    champion: str | None,
    canary: str | None = None,
) -> Verification:
    """Check the chain, the MLflow mirror and the live alias against each other.

    ``records``: the log as stored; ``mirror``: the registered model's ``audit.*`` tags
    (None when the model is absent); ``champion`` and ``canary``: the aliases as the registry
    has them now.
    """
    result = Verification(records=len(records), champion_alias=champion, canary_alias=canary)
    previous: dict[str, Any] | None = None
    for record in records:
        seq = record.get("seq")
        expected_seq = previous["seq"] + 1 if previous else 1
        if seq != expected_seq:
            result.problems.append(
                f"record {expected_seq} is missing (the log jumps from {expected_seq - 1} to {seq})"
            )
        if record.get("hash") != digest(record):
            result.problems.append(f"record {seq} was edited: its hash does not match its content")
        elif previous is not None and record.get("prev") != previous.get("hash"):
            result.problems.append(
                f"record {seq} does not follow record {previous.get('seq')}: history rewritten"
            )
        previous = record
    by_seq: dict[int, dict[str, Any]] = {int(r.get("seq") or 0): r for r in records}
    if mirror is not None:
        mirrored = {int(k[len(MIRROR_PREFIX):]): v for k, v in mirror.items()
                    if k.startswith(MIRROR_PREFIX) and k[len(MIRROR_PREFIX):].isdigit()}  # fmt: skip
        for seq, record in by_seq.items():
            value = mirrored.get(seq)
            if value is None:
                result.problems.append(f"record {seq} ({record.get('action')}) is missing from MLflow "
                                       f"(tag {mirror_key(seq)} deleted)")  # fmt: skip
            elif value != mirror_value(record):
                result.problems.append(f"record {seq} ({record.get('action')}) differs in MLflow "
                                       f"(tag {mirror_key(seq)} edited)")  # fmt: skip
        for seq in sorted(set(mirrored) - set(by_seq)):
            result.problems.append(f"MLflow has {mirror_key(seq)}, which the audit log lacks "
                                   "(a record removed from the log, or a tag added by hand)")  # fmt: skip
    audited = audited_champion(records)
    result.champion_audited = audited
    move = last_move(records)
    if champion != audited:
        completed = move is not None and (mirror or {}).get(mirror_key(move["seq"])) == mirror_value(move)
        if move is not None and champion == move.get("from") and not completed:
            result.problems.append(
                f"record {move['seq']} moves champion {_v(move.get('from'))} -> {_v(move.get('to'))} but the "
                f"alias is still {_v(champion)}: a move was interrupted (the next promote or rollback completes it)"
            )
        else:
            result.problems.append(
                f"champion is {_v(champion)} in the registry but the audit log's last move set "
                f"{_v(audited)}: the alias was moved outside mlops"
            )
    wanted_canary = audited_canary(records)
    if canary != wanted_canary:
        result.problems.append(
            f"canary is {_v(canary)} in the registry but the audit log says {_v(wanted_canary)}: a canary move was "
            "interrupted (the next mover completes it) or the alias was moved outside mlops"
        )
    external = [r for r in records if r.get("action") == "external"]
    if external:
        last = external[-1]
        result.notes.append(f"{len(external)} alias move(s) made outside mlops were found and recorded "
                            f"(latest: record {last['seq']}, {_v(last.get('from'))} -> {_v(last.get('to'))})")  # fmt: skip
    return result


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"
