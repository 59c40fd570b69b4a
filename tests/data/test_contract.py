"""The data contract, tested as its users would break it: for every rule a generator
(Hypothesis) takes a real 2013 day and breaks exactly that rule, keeping everything else
consistent (a changed `day` moves `time_hour` with it, a changed arrival time moves the
arrival delay, ...); the contract must report exactly that rule, by id, in one line. And
every real day of the year passes, each checked against the statistics of the days before it.

The checks run in-process through the same validator `mlops validate` uses (schema, the GX
suite, the learned bounds); tests/data/test_bad_batches.py runs the real commands on one
breakage per rule and checks what reaches the store.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines import contract, schema

HISTORY = 28
DAYS = [dt.date(2013, 1, 1) + dt.timedelta(days=i) for i in range(365)]
SAMPLED = DAYS[HISTORY:]  # days with a full history before them


@functools.cache
def year() -> dict[dt.date, pd.DataFrame]:
    from pipelines.source import _package_flights, join_weather
    from pipelines.steps.ingest import _normalise_object_columns

    flights = join_weather(_normalise_object_columns(_package_flights(), pd))
    return {
        dt.date(int(y), int(m), int(d)): frame.reset_index(drop=True)
        for (y, m, d), frame in flights.groupby(["year", "month", "day"], sort=True)
    }


@functools.cache
def stats(day: dt.date) -> dict[str, Any]:
    return contract.statistics(year()[day], 15)


def history(day: dt.date) -> list[dict[str, Any]]:
    before = [d for d in DAYS if d < day][-HISTORY:]
    return [stats(d) for d in before]


@pytest.fixture(scope="module")
def validator():  # type: ignore[no-untyped-def]
    from pipelines.config import Settings, load_params
    from pipelines.steps.validate import Validator

    params = load_params(Settings())
    return Validator(params.section("validate"), params.get("data.late_threshold_min"))


# -- helpers that keep the other rules true ---------------------------------------------------
def hhmm(minutes: pd.Series) -> pd.Series:
    """Minutes after midnight -> HHMM of an actual clock time (midnight is 2400)."""
    minutes = minutes % 1440
    value = (minutes // 60) * 100 + minutes % 60
    return value.where(value != 0, 2400)


def minutes(value: pd.Series) -> pd.Series:
    return (value // 100) * 60 + value % 100


def time_hour(frame: pd.DataFrame) -> pd.Series:
    local = pd.to_datetime(frame[["year", "month", "day", "hour"]])
    utc = local.dt.tz_localize("America/New_York", ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    return utc.dt.strftime("%Y-%m-%dT%H:00:00Z")


def pick(
    draw: Any, frame: pd.DataFrame, where: pd.Series | None = None, most: int = 8, least: int = 1
) -> pd.Index:
    pool = frame.index[where] if where is not None else frame.index
    count = draw(st.integers(min_value=min(least, len(pool)), max_value=min(most, len(pool))))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    return pd.Index(np.random.default_rng(seed).choice(pool, size=count, replace=False))


def renumber(frame: pd.DataFrame, rows: pd.Index) -> None:
    """Give ``rows`` flight numbers no other row of the day uses (the flight key stays unique)."""
    used = set(frame["flight"])
    free = [n for n in range(9999, 0, -1) if n not in used][: len(rows)]
    frame.loc[rows, "flight"] = free


# -- one generator per rule: break exactly that rule ----------------------------------------------
def b_columns(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    column = draw(st.sampled_from(schema.BATCH_COLUMNS))
    mode = draw(st.sampled_from(["drop", "rename", "extra"]))
    if mode == "drop":
        return f.drop(columns=[column])
    if mode == "rename":
        return f.rename(
            columns={column: draw(st.sampled_from([column.upper(), f"{column}_x", column.replace("_", "")]))}
        )
    return f.assign(**{draw(st.sampled_from(["passenger", "gate", "notes"])): "x"})


def b_column_types(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    column = draw(st.sampled_from(contract.NUMBER_COLUMNS))
    rows = pick(draw, f, f[column].notna())
    f[column] = f[column].astype(object)
    f.loc[rows, column] = draw(st.sampled_from(["n/a", "late", "?"]))
    return f


def b_row_count(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    keep = draw(st.integers(min_value=80, max_value=420))  # a partial drop, below the 500-flight floor
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    return f.sample(n=keep, random_state=seed).reset_index(drop=True)


def b_required_fields(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    column = draw(st.sampled_from([c for c in schema.REQUIRED_COLUMNS if c not in schema.FLIGHT_KEY]))
    f.loc[pick(draw, f, most=5), column] = None
    return f


def b_flight_key_unique(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    return pd.concat([f, f.loc[pick(draw, f, most=10)]], ignore_index=True)


def b_in_batch_day(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    rows = pick(draw, f, most=20)
    other = draw(st.sampled_from([d for d in range(1, 29) if d != int(f["day"].iloc[0])]))
    f.loc[rows, "day"] = other
    f.loc[rows, "time_hour"] = time_hour(f.loc[rows])  # still the scheduled hour in UTC
    return f


def b_time_hour_format(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    rows = pick(draw, f, most=30)
    f.loc[rows, "time_hour"] = f.loc[rows, "time_hour"].str.replace("T", " ").str.replace("Z", "")
    return f


def b_clock_times(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    column = draw(st.sampled_from(["sched_arr_time", "arr_time", "dep_time"]))
    delay = {"sched_arr_time": "arr_delay", "arr_time": "arr_delay", "dep_time": "dep_delay"}[column]
    rows = pick(draw, f, f[delay].notna() & f[column].between(100, 2200))
    hours = f.loc[rows, column] // 100
    f.loc[rows, column] = hours * 100 + draw(st.integers(min_value=60, max_value=99))  # e.g. 1275
    # the delay still agrees with the (invalid) clock time, as minutes
    if column == "sched_arr_time":
        f.loc[rows, "arr_delay"] = (
            minutes(f.loc[rows, "arr_time"]) - minutes(f.loc[rows, column]) + 720
        ) % 1440 - 720
    elif column == "arr_time":
        f.loc[rows, "arr_delay"] = (
            minutes(f.loc[rows, column]) - minutes(f.loc[rows, "sched_arr_time"]) + 720
        ) % 1440 - 720
    else:
        f.loc[rows, "dep_delay"] = (
            minutes(f.loc[rows, column]) - minutes(f.loc[rows, "sched_dep_time"]) + 720
        ) % 1440 - 720
    return f


def b_whole_numbers(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    f["distance"] = f["distance"].astype("float64")
    f.loc[pick(draw, f), "distance"] += draw(st.sampled_from([0.5, 0.25, 0.1]))
    return f


def b_value_ranges(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    column, low, high = draw(st.sampled_from([("distance", 6001, 20000), ("air_time", 1001, 5000),
                                              ("flight", 10_000, 99_999)]))  # fmt: skip
    rows = pick(draw, f, f[column].notna())
    start = draw(st.integers(min_value=low, max_value=high - len(rows)))
    f.loc[rows, column] = range(start, start + len(rows))  # distinct: the flight key stays unique
    return f


def b_weather_ranges(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    column, value = draw(
        st.sampled_from([("temp", 500.0), ("humid", 150.0), ("pressure", 2000.0), ("visib", 99.0)])
    )
    share = draw(st.floats(min_value=0.03, max_value=0.3))
    rows = pick(draw, f, least=int(len(f) * share), most=int(len(f) * share))
    f.loc[rows, column] = value
    return f


def b_known_codes(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    column, code = draw(st.sampled_from([("dest", "XQZ"), ("carrier", "ZZ"), ("dest", "AAA")]))
    f.loc[pick(draw, f, most=5), column] = code
    return f


def b_schedule_parts(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    if draw(st.booleans()):
        rows = pick(draw, f, f["minute"] < 59)
        f.loc[rows, "minute"] += 1
    else:
        rows = pick(draw, f, f["hour"] < 23)
        f.loc[rows, "hour"] += 1
        f.loc[rows, "time_hour"] = time_hour(f.loc[rows])
    return f


def b_time_hour_matches(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    rows = pick(draw, f, most=20)
    shift = pd.Timedelta(hours=draw(st.integers(min_value=1, max_value=5)))
    f.loc[rows, "time_hour"] = (pd.to_datetime(f.loc[rows, "time_hour"]) + shift).dt.strftime(
        "%Y-%m-%dT%H:00:00Z"
    )
    return f


def b_route_two_ends(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    rows = pick(draw, f, most=5)
    f.loc[rows, "dest"] = f.loc[rows, "origin"]
    return f


def b_departure_delay_matches(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    rows = pick(draw, f, f["dep_delay"].notna())
    if draw(st.booleans()):
        f.loc[rows, "dep_delay"] += draw(st.integers(min_value=1, max_value=30))
    else:
        f.loc[rows, "dep_delay"] = np.nan  # a departure time without its delay
    return f


def b_arrival_delay_matches(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    rows = pick(draw, f, f["arr_delay"].notna())
    f.loc[rows, "arr_delay"] += draw(st.integers(min_value=1, max_value=30))
    return f


def b_arrival_after_departure(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    rows = pick(draw, f, f["arr_time"].notna() & f["dep_time"].notna())
    f.loc[rows, ["dep_time", "dep_delay"]] = np.nan  # arrived without having departed
    return f


def b_label_computable(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    arrived = f["arr_delay"].notna() & f["air_time"].notna()
    most = max(1, int(len(f) * 0.08))  # few enough that the late rate stays in bounds
    f.loc[pick(draw, f, arrived, most=most), "arr_delay"] = np.nan
    return f


def b_outcome_null_share(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    share = draw(st.floats(min_value=0.8, max_value=1.0))
    f.loc[pick(draw, f, least=int(len(f) * share), most=int(len(f) * share)), "tailnum"] = None
    return f


def b_late_rate(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    on_time = f["arr_delay"].notna() & (f["arr_delay"] <= 15)
    late_by = draw(st.integers(min_value=16, max_value=240))  # every flight that arrived, late
    shift = late_by - f.loc[on_time, "arr_delay"]
    f.loc[on_time, "arr_delay"] = late_by
    f.loc[on_time, "arr_time"] = hhmm(minutes(f.loc[on_time, "arr_time"]) + shift)
    return f


def b_carrier_mix(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    share = draw(st.floats(min_value=0.35, max_value=0.6))
    carrier = draw(st.sampled_from(["OO", "HA", "F9"]))
    rows = pick(draw, f, f["carrier"] != carrier, least=int(len(f) * share), most=int(len(f) * share))
    f.loc[rows, "carrier"] = carrier
    renumber(f, rows)
    return f


def b_origin_mix(f: pd.DataFrame, draw: Any) -> pd.DataFrame:
    origin = draw(st.sampled_from(schema.NYC_ORIGINS))
    share = draw(st.floats(min_value=0.4, max_value=0.6))
    movable = (f["origin"] != origin) & (f["dest"] != origin)
    rows = pick(
        draw, f, movable, least=min(int(movable.sum()), int(len(f) * share)), most=int(len(f) * share)
    )
    f.loc[rows, "origin"] = origin
    renumber(f, rows)
    return f


BREAKERS: dict[str, Callable[[pd.DataFrame, Any], pd.DataFrame]] = {
    name.removeprefix("b_"): fn for name, fn in globals().items() if name.startswith("b_")
}


def test_every_rule_has_a_generator() -> None:
    assert sorted(BREAKERS) == sorted(rule.id for rule in contract.RULES), (
        "a rule without a breaking test is a defect"
    )


@pytest.mark.parametrize("rule", [rule.id for rule in contract.RULES])
def test_generated_breakages_are_caught_by_exactly_their_rule(validator, rule: str) -> None:  # type: ignore[no-untyped-def]
    """Each rule is broken on several sampled days; each time only that rule fires.

    The count is kept inside the test, so it holds whichever worker runs it.
    """
    caught = 0

    @settings(max_examples=6, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],  # no shrinking: each check is a whole GX run
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(data=st.data())
    def a_breakage_is_caught(data: st.DataObject) -> None:
        nonlocal caught
        day = data.draw(st.sampled_from(SAMPLED), label="day")
        limits = contract.bounds(year()[day], history(day), validator.cfg)
        if rule == "late_rate":  # a history of storms leaves no room above it to break into
            from hypothesis import assume

            assume(limits.late_rate_max < 0.9)
        broken = BREAKERS[rule](year()[day].copy(), data.draw)
        checked = validator.check(broken, day, history(day))
        assert checked.rules == {rule}, (day, checked.failures)
        line = checked.failures[0][1]
        assert line.startswith(f"{rule} ("), line
        assert "\n" not in line
        caught += 1

    a_breakage_is_caught()
    print(f"\n{rule}: {caught} generated breakages caught")
    assert caught >= 5, f"{rule}: only {caught} generated breakages were checked"


def test_every_real_day_passes_against_its_own_history(validator) -> None:  # type: ignore[no-untyped-def]
    """All 365 days, in order, each against the days before it (fixed bounds for the first
    week), as `mlops validate --dates` checks a range: the row rules of 31 days in one run,
    their per-batch rules in one run on a frame of one row per day, each day against the
    bounds its own history gives (checked here against the bounds computed day by day)."""
    from pipelines import contract

    failed: dict[object, object] = {}
    for first in range(0, len(DAYS), 31):
        block = [(day, year()[day].copy()) for day in DAYS[first : first + 31]]
        rows = validator.check_rows(block)
        if rows is None:  # a row rule broke somewhere in the block: which day, and why
            failed.update({day: validator.check(batch, day, history(day)).failures for day, batch in block})
            continue
        together = validator.check_days(rows, history(block[0][0]))
        for day, batch in block:
            if day not in together:  # a per-batch rule broke: which, and why
                failed[day] = validator.check(batch, day, history(day)).failures or "passed alone"
                continue
            assert together[day].bounds == contract.bounds(batch, history(day), validator.cfg), day
            assert together[day].statistics == stats(day) and together[day].gx["success"], day
    assert not failed, {day: lines for day, lines in failed.items() if lines}
