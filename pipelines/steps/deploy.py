"""canary decide: the deploy loop's daily decision on a live canary, from its own traffic.

    mlops canary decide --date D      (the nightly DAG's `decide` task, after monitor)

Evidence: the days before D whose prediction log (``score``) has flights answered by the
canary version, joined with those days' outcomes (the labels that arrived, as ``monitor``
reads them). A flight's delay does not depend on which model predicted it, and ``score``
keeps the champion's answer of every flight, so the two models are compared **paired on the
canary's flights**: one bootstrap resample (``canary.resamples`` draws, seed ``canary.seed``)
applied to both, the interval of the difference. (Comparing the two arms' different flights
instead, the day mix alone swings the Brier difference as much as a crippled model does;
that unpaired comparison remains the fallback for logs without the champion's answers.)

``canary.mode: canary`` (a guardrail, as SageMaker's canary traffic shifting with alarms):

- **breach** (checked every day, rollback at the first): the canary's live ROC AUC is below
  ``monitor.min_live_roc_auc`` (the floor the champion is held to; the upper bound of its
  interval, so that one small day does not trip it by luck), or it is worse than the
  champion at confidence ``canary.confidence``: the upper bound of (canary - champion) ROC AUC
  is below ``-canary.max_auc_drop``, or the lower bound of the Brier difference is above
  ``canary.max_brier_rise``;
- **promote** once ``canary.baking_days`` labelled days have passed without a breach;
- otherwise **baking** (nothing moves).

``canary.mode: ab`` (run it with a larger ``canary.share``, e.g. 0.5): a sequential test on
the paired ROC AUC difference, the mixture SPRT (a normal mixture with standard deviation
``canary.ab_tau`` over the alternatives, the estimate's own spread from the bootstrap; always
valid: it may be looked at every day and still keeps the false-positive rate under
``canary.ab_alpha``), on the difference beyond ``canary.ab_margin`` (models of one
configuration fitted with other seeds differ by up to 0.02 ROC AUC on two weeks of
January, and the paired test sees such differences: a winner must be better by more than
the margin). The ROC AUC, not the Brier score: a day's late rate moves every model's
Brier score with its calibration (measured: two January days of few delays made a one-split
model "win" on Brier against one that ranks flights far better). When the statistic passes
``1 / ab_alpha`` the better side wins: the canary is promoted, or rolled back if the champion
is better; after ``canary.max_days`` labelled days without a winner the canary is rolled back
(no difference shown: the champion stays). A winner is declared as soon as the answer is
clear, not at a fixed horizon.

A decision goes through the registry protocol (:mod:`pipelines.steps.canary`: audited, the
evidence in the record, crash-safe, idempotent), which notifies it; every day's
evidence is written to ``reports/deploy/<D>.json``. Re-running a day after its decision
reports that decision again and moves nothing. Exit 99 (skipped) when there is no canary.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from typing import Any

from pipelines import schema
from pipelines.config import Params, Settings
from pipelines.errors import Skipped
from pipelines.features import build_target
from pipelines.layout import Layout
from pipelines.registry import CHAMPION, Registry
from pipelines.serving.split import CANARY_ROLE
from pipelines.storage import atomic_write_text

log = logging.getLogger(__name__)


def labelled_traffic(
    layout: Layout, day: dt.date, version: str, late_threshold: float
) -> tuple[Any, list[str]]:
    """The flights of the days before ``day`` where ``version`` answered as canary, both roles,
    joined with their outcomes: (frame with role, prediction, y, batch_date; the days)."""
    import pandas as pd

    keys = list(schema.FLIGHT_KEY)
    frames, days = [], []
    for path in sorted(layout.predictions_file(day).parent.glob("2013-*.parquet")):
        d = dt.date.fromisoformat(path.stem)
        outcomes = layout.validated_batch(d)
        if d >= day or not outcomes.exists():
            continue
        scored = pd.read_parquet(path)
        if "role" not in scored.columns:
            continue
        canary = (scored["role"] == CANARY_ROLE) & (scored["model_version"] == version)
        if not canary.any():
            continue
        batch = pd.read_parquet(outcomes, columns=[*keys, "arr_delay"])
        if "champion_prediction" not in scored.columns:  # a log written before paired scoring
            scored["champion_prediction"] = scored["prediction"].where(scored["role"] == CHAMPION)
        columns = [*keys, "prediction", "champion_prediction", "role", "model_version"]
        joined = scored[columns].merge(batch, on=keys, how="inner")
        joined["y"] = build_target(joined, late_threshold).to_numpy()
        joined["batch_date"] = d.isoformat()
        frames.append(
            joined[["role", "model_version", "prediction", "champion_prediction", "y", "batch_date"]]
        )
        days.append(d.isoformat())
    frame = pd.concat(frames, ignore_index=True) if frames else None
    return frame, days


def compare(frame: Any, samples: int, seed: int, confidence: float) -> dict[str, Any]:
    """Live metrics of each side with bootstrap intervals, and the difference canary -
    champion. Paired when the champion's prediction of the canary's flights is known (the
    difference on the same flights, one resample applied to both: much tighter, since the
    two share each flight's luck); otherwise unpaired (each side's own flights, resampled
    on their own)."""
    import numpy as np

    from pipelines.intervals import Interval, Resamples, weighted_auc, weighted_mean

    sides: dict[str, Any] = {}
    draws: dict[str, dict[str, Any]] = {}
    canary_rows = frame[frame["role"] == CANARY_ROLE]
    for index, role in enumerate((CHAMPION, CANARY_ROLE)):
        part = frame[frame["role"] == role]
        y, p = part["y"].to_numpy(dtype=float), part["prediction"].to_numpy(dtype=float)
        if len(part) == 0 or len(np.unique(y)) < 2:
            return {"comparable": False, "reason": f"the {role}'s labelled flights have one outcome only"}
        resamples = Resamples(len(part), samples, seed + index, confidence)
        loss = (p - y) ** 2
        auc_draws, brier_draws = weighted_auc(y, p, resamples.counts), weighted_mean(resamples.counts, loss)
        auc, brier = float(weighted_auc(y, p, None)[0]), float(loss.mean())
        draws[role] = {"auc": auc_draws, "brier": brier_draws, "auc_point": auc, "brier_point": brier}
        sides[role] = {"flights": len(part), "late_rate": round(float(y.mean()), 4),
                       "roc_auc": resamples.interval(auc, auc_draws), "brier": resamples.interval(brier, brier_draws)}  # fmt: skip
    shadow = canary_rows["champion_prediction"].to_numpy(dtype=float)
    found: dict[str, Any] = {"comparable": True, "sides": sides}
    if not np.isnan(shadow).any():  # paired, on the canary's flights
        y, p = canary_rows["y"].to_numpy(dtype=float), canary_rows["prediction"].to_numpy(dtype=float)
        resamples = Resamples(len(y), samples, seed + 2, confidence)
        spread = weighted_auc(y, p, resamples.counts) - weighted_auc(y, shadow, resamples.counts)
        found.update(paired=True, auc_difference=resamples.auc_difference(y, p, shadow),
                     brier_difference=resamples.brier_difference(y, p, shadow),
                     auc_difference_sd=float(np.nanstd(spread, ddof=1)))  # fmt: skip
        return found

    def difference(metric: str) -> Interval:
        values = draws[CANARY_ROLE][metric] - draws[CHAMPION][metric]
        point = draws[CANARY_ROLE][f"{metric}_point"] - draws[CHAMPION][f"{metric}_point"]
        return resamples.interval(point, values)  # the same confidence on both sides

    spread = draws[CANARY_ROLE]["auc"] - draws[CHAMPION]["auc"]
    found.update(paired=False, auc_difference=difference("auc"), brier_difference=difference("brier"),
                 auc_difference_sd=float(np.nanstd(spread, ddof=1)))  # fmt: skip
    return found


def msprt(estimate: float, sd: float, tau: float) -> float:
    """The mixture SPRT statistic for "the difference is 0", from an estimate that is ~
    N(difference, sd^2) (here the paired ROC AUC difference, sd from its bootstrap) and a
    normal mixture N(0, tau^2) over the alternatives (Johari et al., "Always valid
    inference", 2017): large when the estimate is far from 0 for its uncertainty."""
    v = sd * sd
    if v <= 0:
        return 1.0  # no difference in any resample (identical models): no evidence either way
    t2 = tau * tau
    log_lambda = 0.5 * math.log(v / (v + t2)) + (t2 * estimate * estimate) / (2 * v * (v + t2))
    return math.exp(min(log_lambda, 700.0))


# the serving guardrail's queries (Prometheus's HTTP API, over canary.serving_window): requests
# answered wholly by one side (a request split across both counts for neither)
SERVING_QUERIES = {
    "requests": 'sum by (role) (increase(mlops_serve_requests_total{{role=~"champion|canary"}}[{w}]))',
    "errors": 'sum by (role) (increase(mlops_serve_requests_total{{outcome="error",role=~"champion|canary"}}[{w}]))',
    "p99_s": "histogram_quantile(0.99, sum by (le, role) (increase("
    'mlops_serve_request_latency_seconds_bucket{{outcome="ok",role=~"champion|canary"}}[{w}])))',
}


def serving_metrics(url: str, window: str, timeout: float = 10.0) -> dict[str, dict[str, float]]:
    """{role: {requests, errors, p99_s}} of the serving API over ``window``, as Prometheus
    scraped it (its `/metrics`: pipelines/serving/metrics.py)."""
    import urllib.parse
    import urllib.request

    out: dict[str, dict[str, float]] = {}
    for name, template in SERVING_QUERIES.items():
        query = urllib.parse.urlencode({"query": template.format(w=window)})
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query?{query}", timeout=timeout) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused the {name} query: {body.get('error')}")
        for item in body["data"]["result"]:
            value = float(item["value"][1])
            if math.isfinite(value):
                out.setdefault(str(item["metric"].get("role")), {})[name] = round(value, 6)
    return out


def serving_breaches(cfg: dict[str, Any], serving: dict[str, dict[str, float]]) -> list[str]:
    """The canary's error rate and p99 latency against the guardrails, once it has answered
    canary.min_requests requests in the window (none before)."""
    canary, champion = serving.get(CANARY_ROLE, {}), serving.get(CHAMPION, {})
    requests = canary.get("requests", 0.0)
    if requests < int(cfg["min_requests"]):
        return []
    breaches = []
    rate = canary.get("errors", 0.0) / requests
    if rate > float(cfg["max_error_rate"]):
        breaches.append(
            f"canary error rate {rate:.2%} of {requests:.0f} requests above {float(cfg['max_error_rate']):.2%}"
        )
    p99, base = canary.get("p99_s"), champion.get("p99_s")
    if p99 is not None and base and p99 > float(cfg["max_latency_ratio"]) * base:
        breaches.append(f"canary p99 latency {p99 * 1000:.1f} ms above {cfg['max_latency_ratio']} x the "
                        f"champion's {base * 1000:.1f} ms")  # fmt: skip
    return breaches


def decide_rule(cfg: dict[str, Any], floor: float, days: list[str], found: dict[str, Any]) -> tuple[str, str]:
    """(decision: rollback | promote | baking, why)."""
    if not found["comparable"]:
        return "baking", found["reason"]
    sides, auc, brier = found["sides"], found["auc_difference"], found["brier_difference"]
    canary = sides[CANARY_ROLE]
    if cfg["mode"] == "ab":
        delta, sd = auc.estimate, float(found["auc_difference_sd"])
        # a winner must be better by more than the margin: the estimate is shrunk by it first
        margin = float(cfg["ab_margin"])
        statistic = msprt(math.copysign(max(abs(delta) - margin, 0.0), delta), sd, float(cfg["ab_tau"]))
        found["msprt"] = {"statistic": round(statistic, 4), "threshold": round(1 / float(cfg["ab_alpha"]), 2),
                          "auc_difference": round(delta, 5), "sd": round(sd, 5)}  # fmt: skip
        if statistic >= 1 / float(cfg["ab_alpha"]):
            better = delta > 0
            why = (f"A/B: mixture SPRT {statistic:.1f} >= {1 / float(cfg['ab_alpha']):.0f} after {len(days)} labelled "
                   f"day(s): the {'canary' if better else 'champion'} ranks flights better (ROC AUC difference "
                   f"{auc.text(signed=True)}, Brier difference {brier.text(signed=True)})")  # fmt: skip
            return ("promote" if better else "rollback"), why
        if len(days) >= int(cfg["max_days"]):
            return "rollback", (f"A/B: no winner after {len(days)} labelled day(s) (mixture SPRT {statistic:.2f} < "
                                f"{1 / float(cfg['ab_alpha']):.0f}): the champion stays")  # fmt: skip
        return (
            "baking",
            f"A/B: mixture SPRT {statistic:.2f} < {1 / float(cfg['ab_alpha']):.0f} after {len(days)} day(s)",
        )
    c = round(float(cfg["confidence"]) * 100)
    breaches = []
    if canary["roc_auc"].high < floor:
        breaches.append(f"canary live ROC AUC {canary['roc_auc'].text()} below the floor {floor} (its {c}% upper "
                        "bound)")  # fmt: skip
    if auc.high < -float(cfg["max_auc_drop"]):
        breaches.append(f"canary worse than the champion: ROC AUC difference {auc.text(signed=True)}, its {c}% "
                        f"upper bound below -{cfg['max_auc_drop']}")  # fmt: skip
    if brier.low > float(cfg["max_brier_rise"]):
        breaches.append(f"canary worse than the champion: Brier difference {brier.text(signed=True)}, its {c}% "
                        f"lower bound above +{cfg['max_brier_rise']}")  # fmt: skip
    if breaches:
        return "rollback", f"breach after {len(days)} labelled day(s): " + "; ".join(breaches)
    if len(days) >= int(cfg["baking_days"]):
        return "promote", (f"baked {len(days)} labelled day(s) without a breach: ROC AUC difference "
                           f"{auc.text(signed=True)}, Brier difference {brier.text(signed=True)}")  # fmt: skip
    return "baking", f"{len(days)} of {cfg['baking_days']} labelled day(s), no breach"


def _serving_guardrail(cfg: dict[str, Any]) -> dict[str, Any]:
    """The serving guardrail's evidence: skipped without MLOPS_PROMETHEUS_URL."""
    url = os.environ.get("MLOPS_PROMETHEUS_URL", "")
    if not url:
        return {"checked": False, "why": "MLOPS_PROMETHEUS_URL not set: latency and errors not checked"}
    try:
        metrics = serving_metrics(url, str(cfg["serving_window"]))
    except Exception as exc:
        return {"checked": False, "error": f"{url}: {type(exc).__name__}: {str(exc)[:200]}"}
    return {"checked": True, "window": cfg["serving_window"], "by_role": metrics,
            "breaches": serving_breaches(cfg, metrics)}  # fmt: skip


def _jsonable(found: dict[str, Any]) -> dict[str, Any]:
    from pipelines.intervals import Interval

    def convert(value: Any) -> Any:
        if isinstance(value, Interval):
            return {
                "estimate": round(value.estimate, 5),
                "interval": value.as_list(),
                "confidence": value.confidence,
            }
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, float):
            return round(value, 6)
        return value

    return dict(convert(found))


def decide(settings: Settings, params: Params, day: dt.date) -> dict[str, Any]:
    from pipelines.steps import canary as canary_step

    cfg = params.section("canary")
    layout = Layout.of(settings, params.get("validate.store"))
    registry = Registry(settings, params.get("promote.model_name"))
    version, share = registry.canary()
    out = layout.reports / "deploy" / f"{day}.json"
    if version is None:
        earlier = next((r for r in reversed(registry.audit_records())
                        if (r.get("evidence") or {}).get("date") == day.isoformat()), None)  # fmt: skip
        if earlier is not None:  # a re-run of the day that decided: the same answer, nothing moves
            again: dict[str, Any] = {**earlier["evidence"], "changed": False, "record": earlier["seq"]}
            atomic_write_text(out, json.dumps(again, indent=1, sort_keys=True, default=str))
            return again
        raise Skipped(f"model {registry.name!r} has no canary on {day}: nothing to decide")
    champion = registry.aliases().get(CHAMPION)
    frame, days = labelled_traffic(layout, day, version, float(params.get("data.late_threshold_min")))
    if frame is None:
        found: dict[str, Any] = {"comparable": False, "reason": "no labelled canary traffic yet"}
    else:
        found = compare(frame, int(cfg["resamples"]), int(cfg["seed"]), float(cfg["confidence"]))
    decision, why = decide_rule(cfg, float(params.get("monitor.min_live_roc_auc")), days, found)
    found["serving"] = serving = _serving_guardrail(cfg)
    if serving.get("breaches"):  # latency or errors: a rollback whatever the labels say
        decision, why = "rollback", "serving breach: " + "; ".join(serving["breaches"])
    elif serving.get("error") and decision == "promote":  # a guardrail that cannot look holds the promotion
        decision, why = "baking", f"{why}; promotion held: serving metrics unreadable ({serving['error']})"
    evidence = {"date": day.isoformat(), "mode": cfg["mode"], "decision": decision, "why": why,
                "canary": version, "champion": champion, "share": share, "labelled_days": days,
                **_jsonable({k: v for k, v in found.items() if k != "comparable"})}  # fmt: skip
    result: dict[str, Any] = {**evidence, "changed": False}
    if decision != "baking":
        reason = f"deploy loop on {day}: {why}"[:1000]
        end = canary_step.graduate if decision == "promote" else canary_step.rollback
        moved = end(settings, params, evidence, expect=version, reason=reason)
        result.update(changed=moved["changed"], record=moved.get("record"))
    else:  # the day's decision is sent too (the end of the canary sends its own, from the move)
        from pipelines.notify import make_notifier

        summary = {
            k: evidence.get(k) for k in ("date", "canary", "champion", "share", "labelled_days", "why")
        }
        make_notifier().notify(
            f"canary v{version} baking on {day} ({len(days)} labelled day(s))", summary, "info"
        )
    atomic_write_text(out, json.dumps(result, indent=1, sort_keys=True, default=str))
    log.info("canary decide %s: v%s (%s mode, %d labelled day(s)): %s: %s", day, version, cfg["mode"], len(days),
             decision, why)  # fmt: skip
    return result


def decide_days(settings: Settings, params: Params, days: list[dt.date]) -> dict[str, Any]:
    """Each day in order (a range backfill replays the loop day by day); skipped (exit 99)
    when there was no canary on any of them."""
    if len(days) == 1:
        return decide(settings, params, days[0])
    decisions: dict[str, Any] = {}
    last: dict[str, Any] | None = None
    for day in days:
        try:
            last = decide(settings, params, day)
        except Skipped:
            decisions[day.isoformat()] = None
            continue
        decisions[day.isoformat()] = last["decision"]
    if last is None:
        raise Skipped(f"no canary on any day of {days[0]}..{days[-1]}: nothing to decide")
    ended = [r for r in decisions.values() if r in ("promote", "rollback")]
    return {"dates": f"{days[0]}:{days[-1]}", "decisions": decisions, "decision": ended[-1] if ended else "baking",
            "last": last}  # fmt: skip
