"""score: the champion scores a validated day's flights; the predictions are kept.

The prediction log (``data/predictions/<day>.parquet``) holds, per flight, its key, the
model's features, the predicted probability, the champion version and the scoring time:
what ``monitor`` compares with the champion's reference and, when the day's labels
arrive, with the outcomes. Idempotent per day: scoring again rewrites the day's log.

With a canary (``mlops status`` shows it), the day's flights are split the way serving
splits requests (:mod:`pipelines.serving.split`: by flight key, the canary's share): each
flight is scored by one model, and the log's ``role`` (champion | canary) and
``model_version`` say which; ``monitor`` compares the two on the labels that arrive.

A range of days (``--dates``, a range backfill) is scored in one process: the champion is
loaded once, and each day's log is the one a run for that day alone writes. Quarantined
days of a range are listed and skipped; a one-day run for a day not validated fails.
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
from pipelines.serving import split
from pipelines.storage import atomic_write_parquet

log = logging.getLogger(__name__)


def score(settings: Settings, params: Params, day: dt.date) -> dict[str, Any]:
    """Score one validated day with the champion."""
    return _Scorer(settings, params).score(day)


def score_days(settings: Settings, params: Params, days: list[dt.date]) -> dict[str, Any]:
    """Score each validated day of ``days`` in this process (one model load per champion)."""
    if len(days) == 1:
        return score(settings, params, days[0])
    scorer = _Scorer(settings, params)
    quarantined = set(scorer.layout.quarantined_days())
    scored, skipped = {}, []
    for day in days:
        if day in quarantined and not scorer.layout.validated_batch(day).exists():
            skipped.append(day.isoformat())
            log.warning("score %s: quarantined, not validated: skipped in this range", day)
            continue
        one = scorer.score(day)
        scored[one["date"]] = {k: one[k] for k in ("rows", "model_version", "mean_prediction")}
    if not scored:
        raise StepError(f"no validated day in {days[0]}..{days[-1]} to score")
    return {"dates": f"{days[0]}:{days[-1]}", "scored": scored, "skipped": skipped}


class _Scorer:
    def __init__(self, settings: Settings, params: Params) -> None:
        self.settings, self.params = settings, params
        self.layout = Layout.of(settings, params.get("validate.store"))
        self.registry = Registry(settings, params.get("promote.model_name"))
        self._models: dict[str, Any] = {}

    def _model(self, version: str, uri: str) -> Any:
        import mlflow

        if version not in self._models:
            self._models = {**dict(list(self._models.items())[-1:]), version: mlflow.sklearn.load_model(uri)}
        return self._models[version]

    def score(self, day: dt.date) -> dict[str, Any]:
        import numpy as np
        import pandas as pd

        settings, layout, registry = self.settings, self.layout, self.registry
        batch_file = layout.validated_batch(day)
        if not fetch_missing(settings, f"validated/{day}.parquet", batch_file):
            raise StepError(f"batch {day}: not validated yet ({batch_file} is missing): nothing to score")
        # each day: a promotion (or a canary's start or end) during a range takes effect
        canary_version, share = registry.canary()
        champion = registry.alias(CHAMPION)
        if champion is None:
            raise StepError(
                f"model {registry.name!r} has no champion to score with (train and promote first)"
            )
        model = self._model(champion.version, registry.model_uri(champion))

        batch = pd.read_parquet(batch_file)
        features = build_features(batch)
        log_frame = batch[list(schema.FLIGHT_KEY)].copy()
        for column in schema.FEATURES:
            log_frame[f"f_{column}"] = features[column]
        log_frame["prediction"] = model.predict_proba(features)[:, 1]
        # the champion's answer for every flight, the canary's too: a flight's delay does not
        # depend on which model predicted it, so the deploy loop compares the two paired
        log_frame["champion_prediction"] = log_frame["prediction"]
        log_frame["model_version"] = champion.version
        log_frame["role"] = CHAMPION
        canary = (
            registry.get(canary_version) if canary_version and canary_version != champion.version else None
        )
        if canary is not None and share > 0:
            mask = np.array(split.to_canary(split.frame_keys(batch), share, canary.version), dtype=bool)
            if mask.any():
                canary_model = self._model(canary.version, registry.model_uri(canary))
                log_frame.loc[mask, "prediction"] = canary_model.predict_proba(features[mask])[:, 1]
                log_frame.loc[mask, "model_version"] = canary.version
                log_frame.loc[mask, "role"] = split.CANARY_ROLE
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
        canary_rows = int((log_frame["role"] == split.CANARY_ROLE).sum())
        if canary_rows:
            result.update(canary_version=canary.version if canary else None, canary_rows=canary_rows)
        log.info("score %s: %d flights with champion v%s (mean risk %.3f)", day, len(log_frame), champion.version,
                 result["mean_prediction"])  # fmt: skip
        return result
