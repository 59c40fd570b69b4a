"""monitor: is the champion still fit for the data it now sees?

For batch date D it compares the current window (the validated days in
``(D - monitor.window_days, D]`` with the champion's predictions) against the champion's
reference sample (training features + predictions, logged with the model) using
Evidently: per-column data drift, the share of drifted columns, and prediction drift.
Once labels have arrived it also measures live performance: the predictions made for
D - 1 joined with that day's outcomes (ROC AUC, Brier); with a canary, its flights are
measured beside the champion's (``live.by_role``) and kept out of the champion's drift
window and breach. A breach of any threshold in
``params.yaml`` (``monitor.*``) sets ``breach`` with the reasons; the Airflow DAG turns a
breach into an Asset event that starts retraining.

Outputs: ``reports/monitor/<D>/drift.html`` (Evidently), ``summary.json``; both are
logged to MLflow (experiment ``<experiment>-monitoring``, one run per date).

A range of days (``--dates``, a range backfill) is monitored day by day in one process:
each day's report is the one a run for that day alone writes (its window looks back, never
forward). The range's result is the breach of any day, with each reason prefixed by its day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from pipelines import schema
from pipelines.config import ConfigError, Params, Settings
from pipelines.errors import StepError
from pipelines.faults import point
from pipelines.features import build_target
from pipelines.helper import Helper
from pipelines.helper import start as start_helper
from pipelines.layout import Layout
from pipelines.publish import fetch_missing, publish_tree
from pipelines.registry import CHAMPION, Registry
from pipelines.storage import atomic_copy, atomic_write_text

log = logging.getLogger(__name__)

PREDICTION = "prediction"


def reference_sample(settings: Settings, registry: Registry, run_id: str, version: str) -> Any:
    """The champion's reference (features + predictions), cached locally per version."""
    import pandas as pd

    return pd.read_parquet(reference_path(settings, registry.name, run_id, version))


def reference_path(settings: Settings, model_name: str, run_id: str, version: str) -> Path:
    """The local copy of a version's reference sample, downloaded once (atomically: a kill
    mid-download leaves no half file under the cached name)."""
    cached = settings.path(".mlops", "reference", f"{model_name}-v{version}.parquet")
    if not cached.exists():
        import mlflow

        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="reference/reference.parquet", tracking_uri=settings.mlflow_uri
        )
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(Path(local), cached)
    return cached


def find_champion(settings: Settings, model_name: str) -> dict[str, str]:
    """The champion's version and run, and the local path of its reference sample (called in
    the MLflow helper process, see :mod:`pipelines.helper`)."""
    champion = Registry(settings, model_name).alias(CHAMPION)
    if champion is None:
        raise StepError(f"model {model_name!r} has no champion to monitor")
    path = reference_path(settings, model_name, champion.run_id, champion.version)
    return {"version": champion.version, "run_id": champion.run_id, "reference": str(path)}


def log_monitor_run(
    settings: Settings, day: str, tags: dict[str, str], metrics: dict[str, float], out_dir: str
) -> str:
    """One MLflow run for a monitored day: its tags, metrics and report (called in the MLflow
    helper process). Returns the run id."""
    import mlflow

    from pipelines.tracking import close_stale_runs, connect, experiment_id, owner_tags, run_name

    client = connect(settings)
    exp_id = experiment_id(settings, client, suffix="-monitoring")
    close_stale_runs(client, exp_id)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name("monitor", day), tags=owner_tags()) as run:
        point("monitor:run-open")
        mlflow.set_tags(tags)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(out_dir, artifact_path=f"monitor/{day}")
    return str(run.info.run_id)


def _logged_features(frame: Any) -> Any:
    """A prediction log's features + prediction, under the model's column names."""
    logged = frame[[*(f"f_{c}" for c in schema.FEATURES), PREDICTION]]
    return logged.rename(columns={f"f_{c}": c for c in schema.FEATURES})


def current_window(layout: Layout, day: dt.date, days: int, settings: Settings | None = None) -> Any:
    """Scored flights of the validated days in (day - days, day], features + prediction
    (prediction logs not on this host are read from the store)."""
    import pandas as pd

    frames = []
    for offset in range(days):
        d = day - dt.timedelta(days=offset)
        path = layout.predictions_file(d)
        if path.exists() or (settings and fetch_missing(settings, f"predictions/{d}.parquet", path)):
            frame = pd.read_parquet(path)
            if "role" in frame.columns:  # the champion's flights: a canary's are its own traffic
                frame = frame[frame["role"] == CHAMPION]
            frames.append(_logged_features(frame))
    if not frames:
        raise StepError(
            f"batch {day}: no scored flights in the {days} day(s) up to it (run `mlops score` first)"
        )
    return pd.concat(frames, ignore_index=True)


def served_window(layout: Layout, day: dt.date, days: int, settings: Settings | None = None) -> Any:
    """What the serving API's champion scored in (day - days, day]: its prediction log
    (``mlops serve``), fetched from the store where this host lacks a file."""
    import pandas as pd

    store = settings.store() if settings else None
    frames = []
    for offset in range(days):
        d = day - dt.timedelta(days=offset)
        folder = layout.served_dir(d)
        if store is not None:
            for key in store.keys(f"predictions/served/{d}/"):
                fetch_missing(settings, key, folder / key.rsplit("/", 1)[-1])  # type: ignore[arg-type]
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            frame = pd.read_parquet(path)
            frames.append(_logged_features(frame[frame["role"] == CHAMPION]))  # not the shadow's rows
    if not frames:
        raise StepError(f"batch {day}: the serving API logged no predictions in the {days} day(s) up to it")
    return pd.concat(frames, ignore_index=True)


def live_performance(layout: Layout, day: dt.date, late_threshold: float) -> dict[str, Any] | None:
    """Yesterday's predictions against yesterday's outcomes (the labels that arrived)."""
    import pandas as pd
    from sklearn.metrics import brier_score_loss, roc_auc_score

    yesterday = day - dt.timedelta(days=1)
    predictions, outcomes = layout.predictions_file(yesterday), layout.validated_batch(yesterday)
    if not (predictions.exists() and outcomes.exists()):
        return None
    keys = list(schema.FLIGHT_KEY)
    scored = pd.read_parquet(predictions)
    if "role" not in scored.columns:  # a log written before canaries
        scored["role"] = CHAMPION
    batch = pd.read_parquet(outcomes)
    labelled = scored[[*keys, PREDICTION, "role", "model_version"]].merge(
        batch[[*keys, "arr_delay"]], on=keys, how="inner"
    )
    labelled["y"] = build_target(labelled, late_threshold).to_numpy()
    by_role = {}
    for role, part in labelled.groupby("role", sort=True):
        if part["y"].nunique() == 2:
            by_role[str(role)] = {
                "model_version": str(part["model_version"].iloc[0]), "rows": len(part),
                "late_rate": float(part["y"].mean()), "roc_auc": float(roc_auc_score(part["y"], part[PREDICTION])),
                "brier": float(brier_score_loss(part["y"], part[PREDICTION])),
            }  # fmt: skip
    champion = by_role.get(CHAMPION)
    if champion is None:
        return None
    # the champion's flights decide the breach; a canary's are reported beside them
    return {"date": yesterday.isoformat(), **{k: v for k, v in champion.items() if k != "model_version"},
            **({"by_role": by_role} if len(by_role) > 1 else {})}  # fmt: skip


def drift_report(reference: Any, current: Any, cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Run Evidently's data drift preset over features + prediction."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    # a column with no value at all on one side cannot be compared (e.g. no gust reported
    # in a small window of served requests): left out and listed, never called drifted
    empty = [c for c in schema.FEATURES if current[c].isna().all() or reference[c].isna().all()]
    columns = [c for c in [*schema.FEATURES, PREDICTION] if c not in empty]
    definition = DataDefinition(
        numerical_columns=[c for c in [*schema.NUMERIC_FEATURES, PREDICTION] if c not in empty],
        categorical_columns=[c for c in schema.CATEGORICAL_FEATURES if c not in empty],
    )
    ref = Dataset.from_pandas(reference[columns], data_definition=definition)
    cur = Dataset.from_pandas(current[columns], data_definition=definition)
    preset = DataDriftPreset(
        columns=columns,
        drift_share=cfg["drift_share"],
        num_method=cfg["num_method"],
        num_threshold=cfg["num_threshold"],
        cat_method=cfg["cat_method"],
        cat_threshold=cfg["cat_threshold"],
        # a week's weather is expected to differ from a month's: a wider margin for it
        per_column_threshold={c: cfg["weather_threshold"] for c in schema.WEATHER_FEATURES if c not in empty},
    )
    snapshot = Report([preset]).run(current_data=cur, reference_data=ref)
    metrics = snapshot.dict()["metrics"]
    share = metrics[0]["value"]
    per_column: dict[str, dict[str, Any]] = {}
    for metric in metrics[1:]:
        config = metric.get("config", {})
        column = config.get("column")
        if column is None:
            continue
        threshold = float(config.get("threshold", 0.05))
        method = str(config.get("method", ""))
        score = float(metric["value"])
        # p-value tests drift when the score falls below the threshold; distances when above
        p_value = (
            "p_value" in method.lower()
            or "test" in method.lower()
            or method.lower() in ("ks", "chisquare", "z")
        )
        drifted = score < threshold if p_value else score >= threshold
        per_column[column] = {
            "score": round(score, 5),
            "threshold": threshold,
            "method": method,
            "drifted": drifted,
        }
    if PREDICTION in per_column:
        pred = per_column[PREDICTION]
        pred["threshold"] = float(cfg["prediction_drift_threshold"])
        pred["drifted"] = pred["score"] >= pred["threshold"]
    return snapshot, {"count": int(share["count"]), "share": float(share["share"]), "columns": per_column,
                      "unmeasured": empty}  # fmt: skip


def monitor(settings: Settings, params: Params, day: dt.date, helper: Helper | None = None) -> dict[str, Any]:
    """Monitor one day. MLflow's calls go through ``helper`` (see :mod:`pipelines.helper`;
    None: in this process)."""
    import pandas as pd

    helper = helper or Helper(settings)
    cfg = params.section("monitor")
    layout = Layout.of(settings, params.get("validate.store"))
    asked = helper.submit(f"{__name__}:find_champion", model_name=params.get("promote.model_name"))
    traffic = cfg.get("traffic", "scored")
    try:
        if traffic == "scored":  # the nightly batch scoring (`mlops score`)
            current = current_window(layout, day, cfg["window_days"], settings)
        elif traffic == "served":  # requests to `mlops serve`
            current = served_window(layout, day, cfg["window_days"], settings)
        else:
            raise ConfigError(f"monitor.traffic must be 'scored' or 'served', got {traffic!r}")
    except Exception:
        asked()  # a missing champion (or a registry outage) is the error to report first
        raise
    import evidently.presets  # noqa: F401  # imported while the helper looks up the champion

    champion = asked()
    point("monitor:champion")
    reference = pd.read_parquet(champion["reference"])
    snapshot, drift = drift_report(reference, current, cfg)
    prediction = drift["columns"].get(PREDICTION, {})
    features_drift = {c: v for c, v in drift["columns"].items() if c != PREDICTION}
    n_drifted = sum(v["drifted"] for v in features_drift.values())
    share = n_drifted / max(len(features_drift), 1)
    live = live_performance(layout, day, params.get("data.late_threshold_min"))

    reasons = []
    if share >= cfg["drift_share"]:
        reasons.append(f"data drift: {n_drifted}/{len(features_drift)} features drifted "
                       f"(share {share:.2f} >= {cfg['drift_share']})")  # fmt: skip
    if cfg["prediction_drift"] and prediction.get("drifted"):
        reasons.append(f"prediction drift: {prediction['method']} score {prediction['score']} "
                       f"(threshold {prediction['threshold']})")  # fmt: skip
    if live is not None and live["roc_auc"] < cfg["min_live_roc_auc"]:
        reasons.append(f"live roc_auc {live['roc_auc']:.3f} < {cfg['min_live_roc_auc']} on {live['date']}")
    if live is not None and live["brier"] > cfg["max_live_brier"]:
        reasons.append(f"live brier {live['brier']:.3f} > {cfg['max_live_brier']} on {live['date']}")

    out_dir = layout.monitor_dir(day)
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(out_dir / "drift.html"))
    summary = {
        "date": day.isoformat(), "champion_version": champion["version"], "window_days": cfg["window_days"],
        "traffic": traffic,
        "current_rows": len(current), "reference_rows": len(reference),
        "drift_share": round(share, 4), "drifted_features": sorted(c for c, v in features_drift.items() if v["drifted"]),
        "prediction_drift": prediction, "mean_prediction": round(float(current[PREDICTION].mean()), 4),
        "reference_mean_prediction": round(float(reference[PREDICTION].mean()), 4),
        "unmeasured_features": drift["unmeasured"],
        "live": live, "breach": bool(reasons), "reasons": reasons, "columns": features_drift,
    }  # fmt: skip
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    publish_tree(settings, f"reports/monitor/{day}", out_dir)
    point("monitor:report-written")

    tags = {
        "mlops.step": "monitor",
        "mlops.batch_date": day.isoformat(),
        "mlops.champion_version": champion["version"],
        "mlops.breach": str(bool(reasons)).lower(),
    }
    metrics = {
        "drift_share": share,
        "drifted_features": float(n_drifted),
        "mean_prediction": summary["mean_prediction"],
    }
    if prediction:
        metrics["prediction_drift_score"] = prediction["score"]
    if live:
        metrics.update(live_roc_auc=live["roc_auc"], live_brier=live["brier"])
        canary = (live.get("by_role") or {}).get("canary")
        if canary:
            metrics.update(live_canary_roc_auc=canary["roc_auc"], live_canary_brier=canary["brier"])
    helper.submit(
        f"{__name__}:log_monitor_run", day=day.isoformat(), tags=tags, metrics=metrics, out_dir=str(out_dir)
    )()
    log.info("monitor %s: drift share %.2f (%s), prediction drift %s, live %s -> %s", day, share,
             ", ".join(summary["drifted_features"]) or "none", prediction.get("drifted"),
             "n/a" if live is None else f"auc {live['roc_auc']:.3f}", "BREACH" if reasons else "ok")  # fmt: skip
    log.info("monitor %s: Evidently report: %s", day, (out_dir / "drift.html").resolve().as_uri())
    if reasons:
        from pipelines.notify import make_notifier

        make_notifier().notify(f"drift breach on {day} (champion v{champion['version']})", {
            "reasons": reasons, "drift_share": share, "live": live,
            "report": (out_dir / "drift.html").resolve().as_uri(),
        }, level="warning")  # fmt: skip
    return {k: v for k, v in summary.items() if k != "columns"}


def monitor_days(settings: Settings, params: Params, days: list[dt.date]) -> dict[str, Any]:
    """Monitor each day of ``days`` in this process; quarantined days are skipped."""
    with start_helper(settings, "monitor") as helper:  # MLflow's import starts now, beside ours
        return _monitor_days(settings, params, days, helper)


def _monitor_days(settings: Settings, params: Params, days: list[dt.date], helper: Helper) -> dict[str, Any]:
    if len(days) == 1:
        return monitor(settings, params, days[0], helper)
    layout = Layout.of(settings, params.get("validate.store"))
    quarantined = set(layout.quarantined_days())
    results, skipped = [], []
    for day in days:
        if day in quarantined and not layout.validated_batch(day).exists():
            skipped.append(day.isoformat())
            log.warning("monitor %s: quarantined, not validated: skipped in this range", day)
            continue
        results.append(monitor(settings, params, day, helper))
    if not results:
        raise StepError(f"no validated day in {days[0]}..{days[-1]} to monitor")
    last = results[-1]
    breached = [r for r in results if r["breach"]]
    return {
        **last, "dates": f"{days[0]}:{days[-1]}", "skipped": skipped,
        "breach": bool(breached), "breach_days": [r["date"] for r in breached],
        "reasons": [f"{r['date']}: {reason}" for r in breached for reason in r["reasons"]],
        "drift_shares": {r["date"]: r["drift_share"] for r in results},
    }  # fmt: skip
