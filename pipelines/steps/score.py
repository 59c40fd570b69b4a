"""score: the champion scores a validated day's flights; the predictions are kept.

The prediction log (``data/predictions/<day>.parquet``) holds, per flight, its key, the
model's features, the predicted probability, the champion version and the scoring time:
what ``monitor`` compares with the champion's reference and, when the day's labels
arrive, with the outcomes. Idempotent per day: scoring again rewrites the day's log.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

from pipelines import schema
from pipelines.config import Params, Settings
from pipelines.errors import StepError
from pipelines.features import build_features
from pipelines.layout import Layout
from pipelines.publish import fetch_missing, publish_files
from pipelines.registry import CHAMPION, Registry
from pipelines.storage import atomic_write_parquet

log = logging.getLogger(__name__)


def score(settings: Settings, params: Params, day: dt.date) -> dict[str, Any]:
    import mlflow
    import pandas as pd

    layout = Layout.of(settings, params.get("validate.store"))
    batch_file = layout.validated_batch(day)
    if not fetch_missing(settings, f"validated/{day}.parquet", batch_file):
        raise StepError(f"batch {day}: not validated yet ({batch_file} is missing): nothing to score")
    registry = Registry(settings, params.get("promote.model_name"))
    champion = registry.alias(CHAMPION)
    if champion is None:
        raise StepError(f"model {registry.name!r} has no champion to score with (train and promote first)")
    model = mlflow.sklearn.load_model(registry.model_uri(champion))

    batch = pd.read_parquet(batch_file)
    features = build_features(batch)
    log_frame = batch[list(schema.FLIGHT_KEY)].copy()
    for column in schema.FEATURES:
        log_frame[f"f_{column}"] = features[column]
    log_frame["prediction"] = model.predict_proba(features)[:, 1]
    log_frame["model_version"] = champion.version
    log_frame["scored_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    log_frame["batch_date"] = day.isoformat()
    out = layout.predictions_file(day)
    staged = out.with_name(f".{out.name}.staged")
    atomic_write_parquet(staged, log_frame)
    try:
        publish_files(settings, [(f"predictions/{day}.parquet", staged)])
        os.replace(staged, out)  # the local log appears only once the store has it
    finally:
        staged.unlink(missing_ok=True)
    result = {"date": day.isoformat(), "rows": len(log_frame), "model_version": champion.version,
              "mean_prediction": round(float(log_frame["prediction"].mean()), 4), "predictions": str(out)}  # fmt: skip
    log.info("score %s: %d flights with champion v%s (mean risk %.3f)", day, len(log_frame), champion.version,
             result["mean_prediction"])  # fmt: skip
    return result
