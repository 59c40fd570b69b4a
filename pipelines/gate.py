"""The gate report: checks with value, threshold and verdict, written as JSON + Markdown.

Like TFX's blessing, it is an artifact: evaluate writes it, promote consumes it and never
re-decides.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.intervals import Interval

_OPS = {">=": operator.ge, "<=": operator.le}
_UNITS = {"flight": "flights", "airport_hour": "airport-hours (origin, day, scheduled hour)"}


@dataclass
class Check:
    name: str
    kind: str  # floor | champion | slice | history
    value: float | None
    threshold: float | None
    op: str
    verdict: str = "skipped"  # pass | fail | skipped
    detail: str = ""
    # the point estimate and its bootstrap interval ([1 - c, c] quantiles; see pipelines.intervals)
    estimate: float | None = None
    interval: list[float] | None = None

    @classmethod
    def compare(
        cls, name: str, kind: str, value: float, op: str, threshold: float, detail: str = ""
    ) -> Check:
        ok = _OPS[op](value, threshold)
        return cls(name, kind, round(value, 5), round(threshold, 5), op, "pass" if ok else "fail", detail)

    def with_interval(self, interval: Interval) -> Check:
        self.estimate, self.interval = round(interval.estimate, 5), interval.as_list()
        return self

    @classmethod
    def skipped(cls, name: str, kind: str, detail: str) -> Check:
        return cls(name, kind, None, None, "", "skipped", detail)

    @classmethod
    def holds(cls, name: str, kind: str, ok: bool, detail: str) -> Check:
        """A yes/no check with no number (e.g. "not a rolled-back model")."""
        return cls(name, kind, None, None, "", "pass" if ok else "fail", detail)


@dataclass
class GateReport:
    run_id: str
    model_uri: str
    data_version: str
    window: dict[str, Any]
    holdout: dict[str, Any]
    challenger: dict[str, float]
    champion: dict[str, Any] | None  # version, run_id, metrics; None when there is none
    checks: list[Check] = field(default_factory=list)
    evaluated_at: str = ""
    thresholds: dict[str, Any] = field(default_factory=dict)
    # how challenger and champion were compared: the holdout days unseen by both, the rows,
    # the champion's training days, the bootstrap (None when there is no champion)
    comparison: dict[str, Any] | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "fail"]

    @property
    def blessed(self) -> bool:
        return not self.failed

    @property
    def verdict(self) -> str:
        return "blessed" if self.blessed else "refused"

    @property
    def champion_version(self) -> str | None:
        return self.champion["version"] if self.champion else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(verdict=self.verdict, blessed=self.blessed, champion_version=self.champion_version)
        return out

    def summary_line(self) -> str:
        against = f"champion v{self.champion_version}" if self.champion else "no champion"
        if self.blessed:
            return (f"gate: blessed (run {self.run_id[:8]}, holdout roc_auc "
                    f"{self.challenger['roc_auc']:.4f}, {len(self.checks)} checks, against {against})")  # fmt: skip
        reasons = "; ".join(
            f"{c.name} {c.value} {c.op} {c.threshold} failed"
            if c.value is not None
            else f"{c.name} failed: {c.detail}"
            for c in self.failed[:5]
        )
        return f"gate: refused (run {self.run_id[:8]}, against {against}): {reasons}"

    def to_markdown(self) -> str:
        lines = [
            f"# Gate report: **{self.verdict.upper()}**", "",
            f"- challenger run: `{self.run_id}` ({self.model_uri})",
            f"- data version (DVC hash of the window): `{self.data_version}`",
            f"- window: {self.window.get('start')} .. {self.window.get('end')}; "
            f"holdout {self.holdout['start']} .. {self.holdout['end']} "
            f"({self.holdout['rows']} flights, late rate {self.holdout['late_rate']:.3f})",
            "- champion: "
            + (f"v{self.champion_version} (run `{self.champion['run_id']}`)" if self.champion else "none (first model)"),
            f"- evaluated at {self.evaluated_at}",
            *self._comparison_lines(), "",
            f"| check | kind | value | op | threshold | verdict | estimate ({self._band()}) | detail |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for c in self.checks:
            mark = {"pass": "pass", "fail": "**FAIL**", "skipped": "skipped"}[c.verdict]
            shown = "" if c.value is None else f"{c.value:.4f}"
            threshold = "" if c.threshold is None else f"{c.threshold:.4f}"
            band = (
                ""
                if c.estimate is None or c.interval is None
                else f"{c.estimate:.4f} ({c.interval[0]:.4f}..{c.interval[1]:.4f})"
            )
            lines.append(
                f"| {c.name} | {c.kind} | {shown} | {c.op} | {threshold} | {mark} | {band} | {c.detail} |"
            )
        lines += ["", "## Metrics on the holdout", "", "| metric | challenger | champion |", "|---|---|---|"]
        champ = (self.champion or {}).get("metrics", {})
        if self.comparison and self.comparison["overlap_days"]:
            lines += [
                "",
                "(the champion's column is on the whole holdout, days it was trained on included)",
                "",
            ]
        for key, value in self.challenger.items():
            other = champ.get(key)
            lines.append(f"| {key} | {value:.4f} | {'' if other is None else f'{other:.4f}'} |")
        return "\n".join(lines) + "\n"

    def _band(self) -> str:
        confidence = self.thresholds.get("confidence")
        if not confidence:
            return "interval"
        return f"{1 - confidence:.0%}..{confidence:.0%} bootstrap interval"

    def _comparison_lines(self) -> list[str]:
        c = self.comparison
        if not c:
            return []
        trained = c["champion_trained"]
        seen = (
            f"champion trained on {trained['start']}..{trained['end']}"
            if trained
            else "champion's days unknown"
        )
        if c["whole_holdout"]:
            where = (
                f"on the whole holdout ({c['rows']} flights): every day of it was in the champion's training "
                f"days ({seen}), which favours the champion; a pass still holds, a failure may not"
            )
        else:
            where = (
                f"on the {len(c['unseen_days'])} of {c['days']} holdout days unseen by both models, "
                f"{c['rows']} flights ({seen}"
                + (f"; left out: {', '.join(c['overlap_days'])}" if c["overlap_days"] else "")
                + ")"
            )
        return [
            f"- challenger vs champion {where}",
            f"- rule: the challenger passes when, at confidence {c['confidence']:.0%}, it is not worse than the "
            f"champion by more than the margin (paired bootstrap of the {_UNITS.get(c.get('unit', 'flight'))}, "
            f"{c.get('units', c['rows'])} drawn with replacement {c['resamples']} times, seed {c['seed']}: "
            f"the bound is the {1 - c['confidence']:.0%} or {c['confidence']:.0%} quantile of the difference)",
        ]
