"""evaluate: the gate. Scores the challenger and the current champion on the **same**
fresh holdout and writes the gate report (a TFX-style blessing) that promote consumes.

Checks: absolute floors (ROC AUC, Brier score, Brier skill over the holdout's base rate),
champion-vs-challenger (the challenger may not lose more than the allowed margin), and
per-slice floors (origin airport, carrier; slices too small to judge are reported as
skipped), and history: a model identical to one that was rolled back (same fingerprint:
data version, parameters, code) is refused until a forced promotion says otherwise. Outputs: ``reports/gate.json`` + ``reports/gate.md``, ``metrics.json`` and the
ROC / PR / calibration curves under ``plots/`` (DVC metrics and plots); the same are
logged on the training run in MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from pipelines import faults, schema
from pipelines.config import Params, Settings
from pipelines.errors import StepError
from pipelines.gate import Check, GateReport
from pipelines.layout import Layout
from pipelines.registry import CHAMPION, Registry, rolled_back
from pipelines.storage import atomic_write_text

log = logging.getLogger(__name__)


def holdout_metrics(y: Any, proba: Any, prior: float) -> dict[str, float]:
    """Holdout metrics. ``brier_skill`` compares with the naive forecast that always
    predicts ``prior``, the late rate of the training days (what is known beforehand)."""
    import numpy as np
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    base_rate = float(y.mean())
    brier = float(brier_score_loss(y, proba))
    reference = float(brier_score_loss(y, np.full(len(y), prior)))
    return {
        "roc_auc": float(roc_auc_score(y, proba)),
        "pr_auc": float(average_precision_score(y, proba)),
        "brier": brier,
        "brier_skill": 1 - brier / reference if reference > 0 else 0.0,
        "log_loss": float(log_loss(y, proba, labels=[0, 1])),
        "mean_prediction": float(proba.mean()),
        "late_rate": base_rate,
        "naive_brier": reference,
    }


def evaluate(settings: Settings, params: Params) -> GateReport:
    import joblib
    import mlflow
    import pandas as pd

    layout = Layout.of(settings, params.get("validate.store"))
    cfg = params.section("evaluate")
    try:
        trained = json.loads((layout.reports / "train.json").read_text())
        window = json.loads((layout.reports / "featurize.json").read_text())
        holdout = pd.read_parquet(layout.features / "holdout.parquet")
        model = joblib.load(layout.models / "model.joblib")
    except FileNotFoundError as exc:
        raise StepError(
            f"evaluate needs the outputs of featurize and train: {exc.filename} is missing"
        ) from None
    X, y = holdout[list(schema.FEATURES)], holdout[schema.TARGET]
    if y.nunique() < 2:
        raise StepError(f"holdout {window['holdout_start']}..{window['holdout_end']} has a single class")
    proba = model.predict_proba(X)[:, 1]
    prior = float(window["train_late_rate"])
    metrics = holdout_metrics(y, proba, prior)

    registry = Registry(settings, params.get("promote.model_name"))
    champion = registry.alias(CHAMPION)
    champion_info = None
    if champion is not None:
        champ_model = mlflow.sklearn.load_model(registry.model_uri(champion))
        champ_proba = champ_model.predict_proba(X)[:, 1]
        champion_info = {"version": champion.version, "run_id": champion.run_id,
                         "metrics": holdout_metrics(y, champ_proba, prior)}  # fmt: skip

    report = GateReport(
        run_id=trained["run_id"], model_uri=trained["model_uri"], data_version=trained["data_version"],
        window={"start": window["start"], "end": window["end"], "days": window["days"]},
        holdout={"start": window["holdout_start"], "end": window["holdout_end"], "rows": len(holdout),
                 "late_rate": metrics["late_rate"]},
        challenger=metrics, champion=champion_info,
        evaluated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), thresholds=dict(cfg),
    )  # fmt: skip
    report.checks = gate_checks(metrics, champion_info, holdout, proba, cfg)
    report.checks.append(history_check(registry.audit_records(), trained.get("fingerprint", "")))
    faults.point("evaluate.scored")
    _write_outputs(layout, report, y, proba)
    faults.point("evaluate.written")
    _log_to_mlflow(settings, report, layout)
    log.info("%s", report.summary_line())
    return report


def gate_checks(
    metrics: dict[str, float], champion: dict[str, Any] | None, holdout: Any, proba: Any, cfg: dict[str, Any]
) -> list[Check]:
    checks = [
        Check.compare("roc_auc floor", "floor", metrics["roc_auc"], ">=", cfg["min_roc_auc"]),
        Check.compare("brier ceiling", "floor", metrics["brier"], "<=", cfg["max_brier"]),
        Check.compare(
            "brier skill vs naive prior", "floor", metrics["brier_skill"], ">=", cfg["min_brier_skill"]
        ),
    ]
    if champion is None:
        checks.append(Check.skipped("roc_auc vs champion", "champion", "no champion yet: first model"))
    else:
        champ = champion["metrics"]
        version = champion["version"]
        checks.append(Check.compare(
            "roc_auc vs champion", "champion", metrics["roc_auc"], ">=", champ["roc_auc"] - cfg["max_auc_drop"],
            f"champion v{version}: {champ['roc_auc']:.4f} - allowed drop {cfg['max_auc_drop']}",
        ))  # fmt: skip
        checks.append(Check.compare(
            "brier vs champion", "champion", metrics["brier"], "<=", champ["brier"] + cfg["max_brier_rise"],
            f"champion v{version}: {champ['brier']:.4f} + allowed rise {cfg['max_brier_rise']}",
        ))  # fmt: skip
    checks.extend(slice_checks(holdout, proba, cfg))
    return checks


def history_check(records: list[dict[str, Any]], fingerprint: str) -> Check:
    """Refuse a rebuild of a rolled-back model (same fingerprint), until forced."""
    name = "not a rolled-back model"
    if not fingerprint:
        return Check.skipped(name, "history", "the trained model has no fingerprint")
    barring = rolled_back(records, fingerprint)
    if barring is None:
        return Check.holds(name, "history", True, "no rolled-back model has this fingerprint")
    return Check.holds(name, "history", False,
                       f"same data, parameters and code as v{barring.get('from')}, rolled back by audit record "
                       f"{barring.get('seq')} ({barring.get('reason')}); only a forced promotion with a reason overrides")  # fmt: skip


def slice_checks(holdout: Any, proba: Any, cfg: dict[str, Any]) -> list[Check]:
    from sklearn.metrics import roc_auc_score

    frame = holdout.assign(_proba=proba)
    checks = []
    for column in cfg["slice_columns"]:
        for value, group in frame.groupby(column, sort=True):
            name = f"roc_auc slice {column}={value}"
            n, positives = len(group), int(group[schema.TARGET].sum())
            if n < cfg["slice_min_rows"] or positives in (0, n):
                checks.append(
                    Check.skipped(name, "slice", f"{n} flights, {positives} late: too few to judge")
                )
                continue
            auc = float(roc_auc_score(group[schema.TARGET], group["_proba"]))
            checks.append(Check.compare(name, "slice", auc, ">=", cfg["slice_min_roc_auc"], f"{n} flights"))
    return checks


def _curves(y: Any, proba: Any) -> dict[str, list[dict[str, float]]]:
    import numpy as np
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    def thin(points: list[dict[str, float]], most: int = 200) -> list[dict[str, float]]:
        if len(points) <= most:
            return points
        keep = np.linspace(0, len(points) - 1, most).round().astype(int)
        return [points[i] for i in keep]

    fpr, tpr, _ = roc_curve(y, proba)
    precision, recall, _ = precision_recall_curve(y, proba)
    observed, predicted = calibration_curve(y, proba, n_bins=10, strategy="quantile")
    return {
        "roc": thin(
            [{"fpr": round(float(a), 5), "tpr": round(float(b), 5)} for a, b in zip(fpr, tpr, strict=True)]
        ),
        "pr": thin(
            [
                {"recall": round(float(r), 5), "precision": round(float(p), 5)}
                for r, p in zip(recall, precision, strict=True)
            ]
        ),
        "calibration": [
            {"predicted": round(float(p), 5), "observed": round(float(o), 5)}
            for p, o in zip(predicted, observed, strict=True)
        ],
    }


def _write_outputs(layout: Layout, report: GateReport, y: Any, proba: Any) -> None:
    import csv
    import io

    atomic_write_text(layout.reports / "gate.json", json.dumps(report.to_dict(), indent=2, default=str))
    atomic_write_text(layout.reports / "gate.md", report.to_markdown())
    champ = (report.champion or {}).get("metrics", {})
    metrics = {
        "holdout": {k: round(v, 5) for k, v in report.challenger.items()},
        "champion_holdout": {k: round(v, 5) for k, v in champ.items()},
        "gate": {
            "blessed": report.blessed,
            "failed_checks": len(report.failed),
            "checks": len(report.checks),
        },
    }
    atomic_write_text(layout.root / "metrics.json", json.dumps(metrics, indent=2))
    for name, rows in _curves(y, proba).items():
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(layout.plots / f"{name}.csv", buffer.getvalue())


def _log_to_mlflow(settings: Settings, report: GateReport, layout: Layout) -> None:
    import mlflow

    from pipelines.tracking import connect

    connect(settings)
    with mlflow.start_run(run_id=report.run_id):
        mlflow.log_metrics({f"holdout_{k}": v for k, v in report.challenger.items()})
        mlflow.set_tags({"mlops.gate_verdict": report.verdict,
                         "mlops.gate_champion": report.champion_version or ""})  # fmt: skip
        # the blessing and what it is about: `mlops promote --run` consumes these on any host
        for name in ("gate.json", "gate.md", "train.json", "featurize.json"):
            mlflow.log_artifact(str(layout.reports / name), artifact_path="gate")
        mlflow.log_artifacts(str(layout.plots), artifact_path="gate/plots")
