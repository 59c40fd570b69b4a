"""Features and target from a validated batch: the one definition used by training,
evaluation and scoring, so what the model sees in production is what it was trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines import schema

if TYPE_CHECKING:
    import pandas as pd

# Physically impossible sensor readings are treated as missing (the 2013 weather table has
# one 1,048 mph wind speed at EWR); validation lets a few through with `mostly`.
_PLAUSIBLE = {"wind_speed": (0, 150), "wind_gust": (0, 200), "temp": (-40, 130)}


def build_features(batch: pd.DataFrame) -> pd.DataFrame:
    """Model inputs for each flight of a batch: schedule, route, carrier and the weather at
    the origin in the departure hour. Numbers are float64 and codes are strings, so the
    MLflow signature accepts missing values everywhere."""
    import pandas as pd

    dates = pd.to_datetime(batch[["year", "month", "day"]])
    out = pd.DataFrame(index=batch.index)
    for column in schema.CATEGORICAL_FEATURES:
        out[column] = batch[column].astype("object")
    out["month"] = batch["month"].astype("float64")
    out["day_of_week"] = dates.dt.dayofweek.astype("float64")
    out["sched_dep_hour"] = (batch["sched_dep_time"] // 100).astype("float64")
    out["sched_dep_minute_of_day"] = (
        (batch["sched_dep_time"] // 100) * 60 + batch["sched_dep_time"] % 100
    ).astype("float64")
    out["sched_arr_hour"] = (batch["sched_arr_time"] // 100).astype("float64")
    out["distance"] = batch["distance"].astype("float64")
    for column in schema.WEATHER_FEATURES:
        values = batch[column].astype("float64")
        if column in _PLAUSIBLE:
            low, high = _PLAUSIBLE[column]
            values = values.where(values.between(low, high))
        out[column] = values
    return out[list(schema.FEATURES)]


def build_target(batch: pd.DataFrame, late_threshold_min: float) -> pd.Series:
    """1 when the flight arrived more than ``late_threshold_min`` late, or never arrived
    (cancelled or diverted: ``arr_delay`` is missing). From a traveller's side a cancelled
    flight is at least as bad as a late one, so it counts as a disruption, not as noise."""
    late = batch["arr_delay"].isna() | (batch["arr_delay"] > late_threshold_min)
    return late.astype("int8").rename(schema.TARGET)
