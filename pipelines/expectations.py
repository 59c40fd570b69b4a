"""The Great Expectations suite for a day's batch, kept as code.

Built from the data contract in :mod:`pipelines.schema` and the ``validate`` params, so a
review of this file is a review of what a batch must satisfy to reach training.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pipelines import schema

if TYPE_CHECKING:
    import great_expectations as gx

SUITE_NAME = "flights_batch"

_INT_TYPES = ["int64", "int32", "int16", "int8", "Int64", "Int32", "Int16", "Int8"]
_NUM_TYPES = [*_INT_TYPES, "float64", "float32", "Float64", "Float32"]
_STR_TYPES = ["object", "string", "str"]

# Physically possible ranges. Weather readings allow a few glitches (`mostly`): the 2013
# table has a 1,048 mph wind speed, which featurization treats as missing.
_RANGES: dict[str, tuple[float, float]] = {
    "month": (1, 12), "day": (1, 31), "sched_dep_time": (0, 2359), "sched_arr_time": (0, 2359),
    "dep_time": (1, 2400), "arr_time": (1, 2400), "hour": (0, 23), "minute": (0, 59),
    "distance": (1, 6000), "air_time": (1, 1000), "flight": (1, 9999),
}  # fmt: skip
_WEATHER_RANGES: dict[str, tuple[float, float]] = {
    "temp": (-40, 130), "dewp": (-60, 100), "humid": (0, 100), "wind_dir": (0, 360),
    "wind_speed": (0, 150), "wind_gust": (0, 200), "precip": (0, 10), "pressure": (900, 1100),
    "visib": (0, 20),
}  # fmt: skip


def build_suite(day: dt.date, validate_params: dict[str, Any]) -> gx.ExpectationSuite:
    """The expectations a batch for ``day`` must meet."""
    import great_expectations as gx

    E = gx.expectations
    max_delay = validate_params["max_abs_delay_min"]
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    add = suite.add_expectation
    # schema: exactly the contract's columns, with the contract's types
    add(E.ExpectTableColumnsToMatchSet(column_set=list(schema.BATCH_COLUMNS), exact_match=True))
    for column in schema.INTEGER_COLUMNS:
        add(E.ExpectColumnValuesToBeInTypeList(column=column, type_list=_INT_TYPES))
    for column in schema.NUMERIC_COLUMNS:
        add(E.ExpectColumnValuesToBeInTypeList(column=column, type_list=_NUM_TYPES))
    for column in schema.STRING_COLUMNS:
        add(E.ExpectColumnValuesToBeInTypeList(column=column, type_list=_STR_TYPES))
    # size: a day of a real schedule, not a partial or a duplicated drop
    add(
        E.ExpectTableRowCountToBeBetween(
            min_value=validate_params["min_rows"], max_value=validate_params["max_rows"]
        )
    )
    # keys and required fields
    for column in schema.REQUIRED_COLUMNS:
        add(E.ExpectColumnValuesToNotBeNull(column=column))
    add(E.ExpectCompoundColumnsToBeUnique(column_list=list(schema.FLIGHT_KEY)))
    # every row belongs to the batch's day
    add(E.ExpectColumnValuesToBeInSet(column="year", value_set=[day.year]))
    add(E.ExpectColumnValuesToBeInSet(column="month", value_set=[day.month]))
    add(E.ExpectColumnValuesToBeInSet(column="day", value_set=[day.day]))
    add(E.ExpectColumnValuesToMatchRegex(column="time_hour", regex=r"^\d{4}-\d\d-\d\dT\d\d:00:00Z$"))
    # ranges (missing values are allowed where the column is not required)
    for column, (low, high) in _RANGES.items():
        add(E.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))
    for column in ("dep_delay", "arr_delay"):
        add(E.ExpectColumnValuesToBeBetween(column=column, min_value=-max_delay, max_value=max_delay))
    for column, (low, high) in _WEATHER_RANGES.items():
        add(E.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, mostly=0.99))
    # codes the reference tables know
    add(E.ExpectColumnValuesToBeInSet(column="origin", value_set=list(schema.NYC_ORIGINS)))
    add(E.ExpectColumnValuesToBeInSet(column="dest", value_set=sorted(schema.known_airports())))
    add(E.ExpectColumnValuesToBeInSet(column="carrier", value_set=sorted(schema.known_carriers())))
    return suite


def feature_constraints() -> dict[str, tuple[float, float] | frozenset[str]]:
    """What the suite allows, restated for the model's features (the serving API's request
    schema): a (low, high) range for numbers, a code set for categories. Derived features
    take their bounds from the batch columns they are computed from."""
    dep_low, dep_high = _RANGES["sched_dep_time"]
    arr_low, arr_high = _RANGES["sched_arr_time"]
    constraints: dict[str, tuple[float, float] | frozenset[str]] = {
        "carrier": schema.known_carriers(),
        "origin": frozenset(schema.NYC_ORIGINS),
        "dest": schema.known_airports(),
        "month": _RANGES["month"],
        "day_of_week": (0, 6),
        "sched_dep_hour": (dep_low // 100, dep_high // 100),
        "sched_dep_minute_of_day": (0, (dep_high // 100) * 60 + 59),
        "sched_arr_hour": (arr_low // 100, arr_high // 100),
        "distance": _RANGES["distance"],
        **_WEATHER_RANGES,
    }
    return constraints
