"""Registry seam: one registered model in MLflow, moved by aliases (never stages).

- ``challenger``: the newest registered version.
- ``champion``: the version in production. It moves only by compare-and-set under a lock
  (:meth:`Registry.move_champion`): the caller says which champion it evaluated against,
  and the move is refused if the alias has moved since. Two runs can never both promote.
- Every move is audited. MLflow keeps no alias history, so the trail is ours: the promoted
  version carries who/when/why, the gate report and the champion it replaced
  (``mlops.previous_champion``, which makes rollback one command), and each event is also
  a registered-model tag ``audit.<UTC time>`` holding a JSON record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import Settings
from pipelines.errors import RegistryConflict, StepError
from pipelines.tracking import connect
from pipelines.versioning import file_lock

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_TAG = "mlops.previous_champion"


@dataclass
class Version:
    version: str
    run_id: str
    source: str
    aliases: list[str]
    tags: dict[str, str] = field(default_factory=dict)


class Registry:
    def __init__(self, settings: Settings, model_name: str) -> None:
        self.settings = settings
        self.name = model_name
        self.client = connect(settings)

    # -- reading -------------------------------------------------------------------------
    def get(self, version: str | int) -> Version | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException:
            return None
        return _to_version(mv)

    def alias(self, alias: str) -> Version | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None  # no such model or alias yet
        return _to_version(mv)

    def version_of_run(self, run_id: str) -> Version | None:
        found = self.client.search_model_versions(f"name='{self.name}' and run_id='{run_id}'")
        return _to_version(found[0]) if found else None

    def model_uri(self, version: Version) -> str:
        return f"models:/{self.name}/{version.version}"

    def audit_trail(self) -> list[dict[str, Any]]:
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(self.name).tags
        except MlflowException:
            return []
        events = [json.loads(v) for k, v in tags.items() if k.startswith("audit.")]
        return sorted(events, key=lambda e: e["at"])

    # -- writing -------------------------------------------------------------------------
    def register(self, model_uri: str, run_id: str, tags: dict[str, str]) -> Version:
        """Register ``model_uri`` (idempotent per run) and point ``challenger`` at it."""
        import mlflow

        existing = self.version_of_run(run_id)
        if existing is None:
            mv = mlflow.register_model(model_uri, self.name, tags=tags)
            existing = self.get(mv.version)
            assert existing is not None
            self.audit("register", version=existing.version, run_id=run_id)
        else:
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, existing.version, key, value)
        self.client.set_registered_model_alias(self.name, CHALLENGER, existing.version)
        return existing

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # One host / shared filesystem: a file lock. Moves are also compare-and-set, so a
        # process that waited here sees the alias the winner set and is refused.
        with file_lock(self.settings.path(".mlops", f"registry-{self.name}.lock"), "registry"):
            yield

    def move_champion(
        self, version: str, expected: str | None, reason: str, *, forced: bool, gate: dict[str, Any]
    ) -> Version | None:
        """Compare-and-set ``champion`` from ``expected`` (None = no champion) to ``version``.

        Returns the replaced champion (or None). Raises :class:`RegistryConflict` if the
        champion is no longer ``expected``.
        """
        with self._lock():
            current = self.alias(CHAMPION)
            current_version = current.version if current else None
            if current_version != expected:
                raise RegistryConflict(
                    f"champion moved since evaluation: the gate compared against "
                    f"{_v(expected)}, the registry now has {_v(current_version)}; "
                    "re-run `mlops evaluate` before promoting"
                )
            if current_version == version:
                return current
            now = _now()
            for key, value in {
                PREVIOUS_TAG: current_version or "",
                "mlops.promoted_at": now, "mlops.promoted_by": self.settings.who,
                "mlops.promotion_reason": reason, "mlops.forced": str(forced).lower(),
                "mlops.gate_verdict": gate.get("verdict", ""),
                "mlops.gate_report": gate.get("report_uri", ""),
            }.items():  # fmt: skip
                self.client.set_model_version_tag(self.name, version, key, value)
            self.client.set_registered_model_alias(self.name, CHAMPION, version)
            self.audit("promote", version=version, previous=current_version, reason=reason,
                       forced=forced, gate_verdict=gate.get("verdict"), at=now)  # fmt: skip
            return current

    def rollback(self, target: str, reason: str) -> tuple[Version, Version]:
        """Move ``champion`` back to ``target`` ("previous" or a version); returns (from, to)."""
        if not reason.strip():
            raise StepError("rollback needs a reason (--reason '...'): it goes into the audit trail")
        with self._lock():
            current = self.alias(CHAMPION)
            if current is None:
                raise StepError(f"model {self.name!r} has no champion to roll back")
            if target in ("", "previous"):
                target = current.tags.get(PREVIOUS_TAG, "")
                if not target:
                    raise StepError(
                        f"champion v{current.version} has no previous champion to roll back to "
                        "(name one with --to VERSION)"
                    )
            chosen = self.get(target)
            if chosen is None:
                raise StepError(f"model {self.name!r} has no version {target!r}")
            if chosen.version == current.version:
                raise StepError(f"v{target} is already the champion")
            now = _now()
            self.client.set_model_version_tag(self.name, current.version, "mlops.rolled_back_at", now)
            self.client.set_model_version_tag(self.name, current.version, "mlops.rolled_back_reason", reason)
            self.client.set_registered_model_alias(self.name, CHAMPION, chosen.version)
            self.audit("rollback", version=chosen.version, previous=current.version, reason=reason, at=now)
            return current, chosen

    def audit(self, action: str, **fields: Any) -> None:
        record = {"action": action, "by": self.settings.who, "at": fields.pop("at", None) or _now(), **fields}
        key = f"audit.{record['at']}.{action}"
        self.client.set_registered_model_tag(self.name, key, json.dumps(record, default=str))
        log.info("registry %s: %s", self.name, json.dumps(record, default=str))


def _to_version(mv: Any) -> Version:
    return Version(
        version=str(mv.version), run_id=mv.run_id or "", source=mv.source or "",
        aliases=list(mv.aliases or []), tags=dict(mv.tags or {}),
    )  # fmt: skip


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _v(version: str | None) -> str:
    return f"v{version}" if version else "no champion"
