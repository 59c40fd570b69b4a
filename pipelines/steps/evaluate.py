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
from typing import TYPE_CHECKING, Any

from pipelines import card, faults, schema
from pipelines.config import Params, Settings
from pipelines.errors import StepError
from pipelines.gate import Check, GateReport
from pipelines.helper import Helper
from pipelines.layout import Layout
from pipelines.registry import CHAMPION, Registry, rolled_back
from pipelines.storage import atomic_write_text

if TYPE_CHECKING:
    from pipelines.intervals import Resamples

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


def gate_context(settings: Settings, model_name: str, holdout: str) -> dict[str, Any]:
    """What the gate needs from MLflow: the champion (its version, run, the days it was
    trained on and its predictions on the holdout's flights) and the audit records. Called
    through the step's MLflow helper (see :mod:`pipelines.helper`): it imports MLflow and
    loads the champion while the step scores the challenger. Arguments and result are JSON
    (the predictions as floats: ``repr`` round-trips them exactly)."""
    import mlflow
    import pandas as pd

    registry = Registry(settings, model_name)
    champion = registry.alias(CHAMPION)
    context: dict[str, Any] = {"audit_records": registry.audit_records(), "champion": None}
    if champion is not None:
        X = pd.read_parquet(holdout, columns=list(schema.FEATURES))
        model = mlflow.sklearn.load_model(registry.model_uri(champion))
        context["champion"] = {
            "version": champion.version,
            "run_id": champion.run_id,
            "trained_days": trained_days(registry, champion),
            "proba": model.predict_proba(X)[:, 1].tolist(),
        }
    return context


def evaluate(settings: Settings, params: Params, helper: Helper | None = None) -> GateReport:
    """The gate. MLflow's calls go through ``helper`` (None: in this process)."""
    helper = helper or Helper(settings)
    layout = Layout.of(settings, params.get("validate.store"))
    # asked first: the helper imports MLflow and scores the champion while this process
    # imports pandas and scikit-learn and scores the challenger
    asked = helper.submit(
        f"{__name__}:gate_context",
        model_name=params.get("promote.model_name"),
        holdout=str(layout.features / "holdout.parquet"),
    )
    import joblib
    import numpy as np
    import pandas as pd

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
    # what does not need the champion, while the helper may still be loading it (on the
    # cores it leaves)
    with helper.sharing_cores():
        proba = model.predict_proba(X)[:, 1]
        prior = float(window["train_late_rate"])
        metrics = holdout_metrics(y, proba, prior)
        resamples = resamples_for(holdout, cfg)
        floors = floor_checks(metrics, holdout, proba, cfg, resamples)
        slices = slice_checks(holdout, proba, cfg, resamples)
        importance = card.permutation_importance(model, X, y, cfg["seed"])
        context = asked()
    champion = context["champion"]
    champion_info = comparison = champ_proba = None
    if champion is not None:
        champ_proba = np.asarray(champion["proba"], dtype=float)
        champion_info = {
            "version": champion["version"],
            "run_id": champion["run_id"],
            "metrics": holdout_metrics(y, champ_proba, prior),
        }
        seen = champion["trained_days"]
        comparison = compared_days(holdout["batch_date"], None if seen is None else tuple(seen))
        comparison.update(
            resamples=cfg["resamples"],
            seed=cfg["seed"],
            confidence=cfg["confidence"],
            unit=cfg["resample_unit"],
            units=resamples.units,
        )

    report = GateReport(
        run_id=trained["run_id"],
        model_uri=trained["model_uri"],
        data_version=trained["data_version"],
        window={"start": window["start"], "end": window["end"], "days": window["days"]},
        holdout={
            "start": window["holdout_start"],
            "end": window["holdout_end"],
            "rows": len(holdout),
            "late_rate": metrics["late_rate"],
        },
        challenger=metrics,
        champion=champion_info,
        evaluated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        thresholds=dict(cfg),
        comparison=comparison,
    )
    report.checks = [
        *floors,
        *champion_checks(champion_info, holdout, proba, cfg, resamples, champ_proba, comparison),
        *slices,
        history_check(context["audit_records"], trained.get("fingerprint", "")),
    ]
    model_card = card.build(
        report.to_dict(), trained, importance, params.get("promote.model_name"), params.section("train")
    )
    faults.point("evaluate.scored")
    _write_outputs(layout, report, y, proba, model_card)
    faults.point("evaluate.written")
    helper.submit(
        f"{__name__}:log_gate",
        run_id=report.run_id,
        challenger=report.challenger,
        comparison=comparison_metrics(report),
        tags={"mlops.gate_verdict": report.verdict, "mlops.gate_champion": report.champion_version or ""},
        reports=str(layout.reports),
        plots=str(layout.plots),
    )()
    log.info("%s", report.summary_line())
    return report


def resamples_for(holdout: Any, cfg: dict[str, Any]) -> Resamples:
    """The bootstrap of the holdout: flights drawn one by one, or by airport-hour (the flights
    of one origin, day and scheduled hour, which share their weather) with
    ``evaluate.resample_unit``."""
    import pandas as pd

    from pipelines.intervals import Resamples

    groups = None
    if cfg["resample_unit"] == "airport_hour":
        keys = holdout[["batch_date", "origin", "sched_dep_hour"]].astype(str).agg("|".join, axis=1)
        groups = pd.factorize(keys)[0]
    return Resamples(len(holdout), cfg["resamples"], cfg["seed"], cfg["confidence"], groups)


def trained_days(registry: Registry, champion: Any) -> tuple[str, str] | None:
    """The first and last day the champion was fitted on (its run's window start and the day
    before its holdout), or None when its run does not say."""
    tags = registry.client.get_run(champion.run_id).data.tags
    start, holdout_start = tags.get("mlops.window_start"), tags.get("mlops.holdout_start")
    if not start or not holdout_start:
        return None
    return start, (dt.date.fromisoformat(holdout_start) - dt.timedelta(days=1)).isoformat()


def compared_days(batch_date: Any, seen: tuple[str, str] | None) -> dict[str, Any]:
    """Which holdout days challenger and champion are compared on: those unseen by both (the
    challenger never trains on its holdout). When the champion was fitted on every one of
    them, the whole holdout, flagged: that comparison favours the champion."""
    days = sorted(batch_date.unique())
    overlap = [d for d in days if seen and seen[0] <= d <= seen[1]]
    unseen = [d for d in days if d not in overlap]
    whole = not unseen
    rows = int(len(batch_date) if whole else batch_date.isin(unseen).sum())
    return {
        "days": len(days),
        "unseen_days": unseen,
        "overlap_days": overlap,
        "whole_holdout": whole,
        "rows": rows,
        "champion_trained": {"start": seen[0], "end": seen[1]} if seen else None,
    }


def floor_checks(
    metrics: dict[str, float], holdout: Any, proba: Any, cfg: dict[str, Any], resamples: Resamples
) -> list[Check]:
    """The challenger's absolute floors, each with its interval."""
    y = holdout[schema.TARGET]
    return [
        Check.compare("roc_auc floor", "floor", metrics["roc_auc"], ">=", cfg["min_roc_auc"]).with_interval(
            resamples.auc(y, proba)
        ),
        Check.compare("brier ceiling", "floor", metrics["brier"], "<=", cfg["max_brier"]).with_interval(
            resamples.brier(y, proba)
        ),
        Check.compare(
            "brier skill vs naive prior", "floor", metrics["brier_skill"], ">=", cfg["min_brier_skill"]
        ),
    ]


def champion_checks(
    champion: dict[str, Any] | None,
    holdout: Any,
    proba: Any,
    cfg: dict[str, Any],
    resamples: Resamples,
    champ_proba: Any = None,
    comparison: dict[str, Any] | None = None,
) -> list[Check]:
    """The comparison with the champion, by the bounds of the paired differences (skipped
    without one)."""
    y = holdout[schema.TARGET]
    if champion is None or comparison is None:
        return [Check.skipped("roc_auc vs champion", "champion", "no champion yet: first model")]
    checks = []
    version, c = champion["version"], f"{cfg['confidence']:.0%}"
    mask = (
        None
        if comparison["whole_holdout"]
        else holdout["batch_date"].isin(comparison["unseen_days"]).to_numpy()
    )
    where = (
        f"the whole holdout (the champion was trained on all of it), {comparison['rows']} flights"
        if comparison["whole_holdout"]
        else f"{comparison['rows']} flights on {len(comparison['unseen_days'])} of {comparison['days']} "
        "holdout days unseen by both"
    )
    auc = resamples.auc_difference(y, proba, champ_proba, mask)
    checks.append(
        Check.compare(
            "roc_auc vs champion",
            "champion",
            auc.low,
            ">=",
            -cfg["max_auc_drop"],
            f"challenger - champion v{version} = {auc.estimate:+.4f} on {where}; at {c} confidence not lower than "
            f"{auc.low:+.4f} (allowed drop {cfg['max_auc_drop']})",
        ).with_interval(auc)
    )
    brier = resamples.brier_difference(y, proba, champ_proba, mask)
    checks.append(
        Check.compare(
            "brier vs champion",
            "champion",
            brier.high,
            "<=",
            cfg["max_brier_rise"],
            f"challenger - champion v{version} = {brier.estimate:+.4f} on {where}; at {c} confidence not higher "
            f"than {brier.high:+.4f} (allowed rise {cfg['max_brier_rise']})",
        ).with_interval(brier)
    )
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


def slice_checks(holdout: Any, proba: Any, cfg: dict[str, Any], resamples: Resamples) -> list[Check]:
    frame = holdout.assign(_proba=proba)
    y = holdout[schema.TARGET]
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
            auc = resamples.auc(y, proba, (frame[column] == value).to_numpy())
            checks.append(
                Check.compare(
                    name, "slice", auc.estimate, ">=", cfg["slice_min_roc_auc"], f"{n} flights"
                ).with_interval(auc)
            )
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


def _write_outputs(
    layout: Layout, report: GateReport, y: Any, proba: Any, model_card: dict[str, Any]
) -> None:
    import csv
    import io

    # the card first: the gate report, written last, is what says this evaluation is complete
    atomic_write_text(layout.reports / "model_card.json", json.dumps(model_card, indent=2, default=str))
    atomic_write_text(layout.reports / "model_card.md", card.to_markdown(model_card))
    atomic_write_text(layout.reports / "model_card.html", card.to_html(model_card))

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
        "vs_champion": comparison_metrics(report),
    }
    atomic_write_text(layout.root / "metrics.json", json.dumps(metrics, indent=2))
    for name, rows in _curves(y, proba).items():
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(layout.plots / f"{name}.csv", buffer.getvalue())


def comparison_metrics(report: GateReport) -> dict[str, float]:
    """The paired differences with the champion and their bounds (empty without one), for
    ``dvc metrics diff`` and the MLflow run."""
    out: dict[str, float] = {}
    for check in report.checks:
        if check.kind == "champion" and check.estimate is not None and check.interval is not None:
            metric = check.name.split()[0]
            out.update(
                {
                    f"{metric}_diff": check.estimate,
                    f"{metric}_diff_low": check.interval[0],
                    f"{metric}_diff_high": check.interval[1],
                }
            )
    if out and report.comparison:
        out["rows"] = report.comparison["rows"]
    return out


def log_gate(
    settings: Settings,
    run_id: str,
    challenger: dict[str, float],
    comparison: dict[str, float],
    tags: dict[str, str],
    reports: str,
    plots: str,
) -> None:
    """The gate's metrics, verdict and files on the training run (called through the step's
    MLflow helper): `mlops promote --run` consumes the blessing from there on any host."""
    import mlflow

    from pipelines.tracking import connect

    connect(settings)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"holdout_{k}": v for k, v in challenger.items()})
        mlflow.log_metrics({f"vs_champion_{k}": v for k, v in comparison.items()})
        mlflow.set_tags(tags)
        # the blessing and what it is about
        for name in (
            "gate.json",
            "gate.md",
            "train.json",
            "featurize.json",
            "model_card.md",
            "model_card.html",
        ):
            mlflow.log_artifact(f"{reports}/{name}", artifact_path="gate")
        mlflow.log_artifacts(plots, artifact_path="gate/plots")
