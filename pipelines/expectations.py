"""The Great Expectations suite of the data contract (:mod:`pipelines.contract`), kept as code.

One suite serves every day of a process: what differs per day (the bounds learned from the
validated history) is a run-time parameter (``{"$PARAMETER": name}``), and the day itself is
checked through a derived column, so the suite, the context and the validation definition
are built once (:class:`pipelines.steps.validate.Validator`). Every expectation carries the id
of the contract rule it checks in ``meta.rule``: a failure is reported by rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines import contract, schema

if TYPE_CHECKING:
    import great_expectations as gx

SUITE_NAME = "flights_batch"

# Physically possible ranges. Weather readings allow a few glitches (`mostly`): the 2013
# table has a 1,048 mph wind speed, which featurization treats as missing.
_RANGES: dict[str, tuple[float, float]] = {
    "month": (1, 12), "day": (1, 31), "hour": (0, 23), "minute": (0, 59),
    "distance": (1, 6000), "air_time": (1, 1000), "flight": (1, 9999),
}  # fmt: skip
_WEATHER_RANGES: dict[str, tuple[float, float]] = {
    "temp": (-40, 130), "dewp": (-60, 100), "humid": (0, 100), "wind_dir": (0, 360),
    "wind_speed": (0, 150), "wind_gust": (0, 200), "precip": (0, 10), "pressure": (900, 1100),
    "visib": (0, 20),
}  # fmt: skip
# rules computed as boolean columns by contract.derive
_DERIVED = ("in_batch_day", "whole_numbers", "schedule_parts", "time_hour_matches", "route_two_ends",
            "departure_delay_matches", "arrival_delay_matches", "arrival_after_departure", "label_computable")  # fmt: skip


def _p(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


# Rules judged on a batch as a whole (its size, shares and rates against the history, or a
# tolerance: `mostly`): they need one run per day. Every other rule holds row by row, so a
# range of days keeps it exactly when the days' rows together do: one run for the range.
PER_BATCH_RULES = frozenset({r.id for r in contract.RULES if r.kind == "distribution"} | {"weather_ranges"})
# A tolerance (`mostly`) is per batch too, but where no row of a range breaks it, no day of
# the range does: a range's run of the row rules also runs these, and the days need them in
# their own run only when some row of the range was outside.
TOLERANCE_RULES = frozenset({"weather_ranges"})
# all | batch (the per-batch rules) | block (the row rules and the tolerances, for a range's
# rows) | learned (the per-batch rules but the tolerances)
PARTS = ("all", "batch", "block", "learned")


def _in_part(rule: str, part: str) -> bool:
    per_batch, tolerance = rule in PER_BATCH_RULES, rule in TOLERANCE_RULES
    return {
        "all": True,
        "batch": per_batch,
        "block": not per_batch or tolerance,
        "learned": per_batch and not tolerance,
    }[part]


def build_suite(validate_params: dict[str, Any], part: str = "all") -> gx.ExpectationSuite:
    """The expectations a batch must meet (after :func:`pipelines.contract.derive`): all of
    them, or the part named (see ``PARTS``)."""
    import great_expectations as gx

    assert part in PARTS, part
    E = gx.expectations
    max_delay = validate_params["max_abs_delay_min"]
    suite = gx.ExpectationSuite(name=SUITE_NAME if part == "all" else f"{SUITE_NAME}_{part}")

    def add(rule: str, kind: Any, **kwargs: Any) -> None:
        assert rule in contract.BY_ID, rule
        if not _in_part(rule, part):
            return
        suite.add_expectation(kind(**kwargs, meta={"rule": rule}))

    add("row_count", E.ExpectTableRowCountToBeBetween, min_value=_p("rows_min"), max_value=_p("rows_max"))
    for column in schema.REQUIRED_COLUMNS:
        add("required_fields", E.ExpectColumnValuesToNotBeNull, column=column)
    add("flight_key_unique", E.ExpectCompoundColumnsToBeUnique, column_list=list(schema.FLIGHT_KEY))
    add("time_hour_format", E.ExpectColumnValuesToMatchRegex, column="time_hour",
        regex=r"^\d{4}-\d\d-\d\dT\d\d:00:00Z$")  # fmt: skip
    for column in contract.CLOCKS:
        add("clock_times", E.ExpectColumnValuesToBeInSet, column=f"{contract.RULE_PREFIX}clock_times:{column}",
            value_set=[True])  # fmt: skip
    for column, (low, high) in _RANGES.items():
        add("value_ranges", E.ExpectColumnValuesToBeBetween, column=column, min_value=low, max_value=high)
    for column in ("dep_delay", "arr_delay"):
        add(
            "value_ranges",
            E.ExpectColumnValuesToBeBetween,
            column=column,
            min_value=-max_delay,
            max_value=max_delay,
        )
    for column, (low, high) in _WEATHER_RANGES.items():
        add(
            "weather_ranges",
            E.ExpectColumnValuesToBeBetween,
            column=column,
            min_value=low,
            max_value=high,
            mostly=0.99,
        )
    add("known_codes", E.ExpectColumnValuesToBeInSet, column="origin", value_set=list(schema.NYC_ORIGINS))
    add("known_codes", E.ExpectColumnValuesToBeInSet, column=f"{contract.RULE_PREFIX}known_codes:dest",
        value_set=[True])  # fmt: skip
    add(
        "known_codes",
        E.ExpectColumnValuesToBeInSet,
        column="carrier",
        value_set=sorted(schema.known_carriers()),
    )
    for rule in _DERIVED:
        add(rule, E.ExpectColumnValuesToBeInSet, column=f"{contract.RULE_PREFIX}{rule}", value_set=[True])
    for column in contract.NULL_SHARE_COLUMNS:
        add("outcome_null_share", E.ExpectColumnProportionOfNonNullValuesToBeBetween, column=column,
            min_value=_p(f"non_null_min__{column}"))  # fmt: skip
    add("late_rate", E.ExpectColumnMeanToBeBetween, column=contract.LATE, max_value=_p("late_rate_max"))
    for rule in contract.MIX_COLUMNS:
        add(
            rule,
            E.ExpectColumnMaxToBeBetween,
            column=f"{contract.STAT_PREFIX}{rule}",
            max_value=_p("mix_max"),
        )
    return suite


# The per-batch rules of a range's days judged together (Validator.check_days): a frame of one
# row per day, one boolean column per per-batch expectation of the suite (:func:`day_verdicts`),
# named after its rule and column.
def day_rule_columns(tolerances: bool) -> list[tuple[str, str]]:
    """(rule, column of the days frame) for each per-batch expectation of the suite, the
    weather tolerance's when ``tolerances`` (the block's run did not clear them)."""
    P = contract.RULE_PREFIX
    columns = [("row_count", f"{P}row_count")]
    if tolerances:
        columns += [("weather_ranges", f"{P}weather_ranges:{c}") for c in _WEATHER_RANGES]
    columns += [("outcome_null_share", f"{P}outcome_null_share:{c}") for c in contract.NULL_SHARE_COLUMNS]
    columns += [("late_rate", f"{P}late_rate"), *((rule, f"{P}{rule}") for rule in contract.MIX_COLUMNS)]
    return columns


def build_days_suite(tolerances: bool) -> gx.ExpectationSuite:
    """The per-batch expectations of the suite over a frame of one row per day: each day's
    verdict of a rule (against the bounds learned for that day) must hold."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=f"{SUITE_NAME}_days" + ("" if tolerances else "_learned"))
    for rule, column in day_rule_columns(tolerances):
        suite.add_expectation(
            gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=[True], meta={"rule": rule})
        )
    return suite


# a value this close to its bound is left to the day's own GX run (float rounding decides it)
_UNDECIDED = 1e-9


def day_verdicts(derived: Any, limits: contract.Bounds, tolerances: bool) -> tuple[dict[str, bool], bool]:
    """One day's verdict of each per-batch expectation (the columns of
    :func:`day_rule_columns`), computed as GX computes the expectation on the day's frame;
    and whether every verdict is clear of float rounding (else the day takes its own run)."""
    P = contract.RULE_PREFIX
    rows = len(derived)
    clear = True

    def at_least(value: float, bound: float) -> bool:
        nonlocal clear
        clear &= abs(value - bound) > _UNDECIDED
        return value >= bound

    verdicts = {f"{P}row_count": at_least(rows, limits.rows_min) and at_least(limits.rows_max, rows)}
    if tolerances:  # GX's `mostly`: the share of non-null values inside the range
        for column, (low, high) in _WEATHER_RANGES.items():
            values = derived[column].dropna()
            inside = int(values.between(low, high).sum())
            verdicts[f"{P}weather_ranges:{column}"] = not len(values) or at_least(inside / len(values), 0.99)
    bounds = limits.parameters()
    for column in contract.NULL_SHARE_COLUMNS:
        share = float(derived[column].notna().sum()) / rows
        verdicts[f"{P}outcome_null_share:{column}"] = at_least(share, bounds[f"non_null_min__{column}"])
    verdicts[f"{P}late_rate"] = at_least(limits.late_rate_max, float(derived[contract.LATE].mean()))
    for rule, shift in limits.mix_shift.items():
        verdicts[f"{P}{rule}"] = at_least(limits.mix_max, shift)
    return verdicts, clear


def build_schema_suite() -> gx.ExpectationSuite:
    """The schema stage as GX expectations, for the data docs of a batch it stopped."""
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite(name=f"{SUITE_NAME}_schema")
    suite.add_expectation(E.ExpectTableColumnsToMatchSet(column_set=list(schema.BATCH_COLUMNS), exact_match=True,
                                                         meta={"rule": "columns"}))  # fmt: skip
    return suite


def feature_constraints() -> dict[str, tuple[float, float] | frozenset[str]]:
    """What the suite allows, restated for the model's features (the serving API's request
    schema): a (low, high) range for numbers, a code set for categories. Derived features
    take their bounds from the batch columns they are computed from."""
    dep_low, dep_high = contract.CLOCKS["sched_dep_time"]
    arr_low, arr_high = contract.CLOCKS["sched_arr_time"]
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
