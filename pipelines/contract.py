"""The data contract of a day's batch, in one place: every rule a batch must satisfy to reach
the DVC-tracked store (and so training), what kind of rule it is and what breaks it.

Three stages, in order; a stage that fails stops the ones after it:

1. **Schema** (:func:`schema_failures`, plain pandas): exactly the contract's columns, each
   holding numbers or text as it should. A missing, renamed or extra column, or text in a
   number column, is reported first and alone: no expectation runs on a column that is not
   there.
2. **Rows** (the Great Expectations suite, :func:`pipelines.expectations.build_suite`): value
   validity (clock times, codes, ranges, whole numbers), cross-column consistency (derived
   columns agree with their sources, a route has two ends, delays agree with the clock times,
   ``time_hour`` is the scheduled hour in UTC) and label integrity (the target can be computed
   honestly for every row). Rules over several columns are computed here as boolean columns
   (:func:`derive`) that the suite checks, so GX's report and data docs show every rule.
3. **Batch statistics against the validated history** (TFX's anomaly detection against a
   schema and statistics): the day's row count, the share of missing values of the outcome
   columns, the late rate, and the mix of carriers and origin airports must stay within
   bounds learned from the statistics kept for the last ``validate.history_days`` validated
   days (``reports/validation/<day>.json``: small files, the store is never re-read), with
   the fixed bounds of ``params.yaml`` until there is enough history.

Each rule has an id used in messages, in GX's ``meta`` and in the tests that break it on
purpose (``tests/data/test_contract.py``: a rule without a breaking test is a defect).
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines import schema

if TYPE_CHECKING:
    import pandas as pd

RULE_PREFIX = "rule:"  # derived boolean columns: True where the row keeps the rule (or it does not apply)
STAT_PREFIX = "stat:"  # one value per batch, repeated on every row, checked against learned bounds
LATE = f"{RULE_PREFIX}late"  # the label, for the late-rate check (0/1)


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str  # schema | validity | consistency | label | distribution
    title: str  # what must hold
    columns: tuple[str, ...]
    breaks: str  # what breaks it (the contract table in docs/how-it-works.md)


RULES: tuple[Rule, ...] = (
    Rule("columns", "schema", "exactly the contract's columns", schema.BATCH_COLUMNS,
         "a column missing, renamed or added; an unreadable file"),
    Rule("column_types", "schema", "number columns hold numbers, text columns hold text",
         schema.BATCH_COLUMNS, "text in a number column (e.g. 'late' in arr_delay)"),
    Rule("row_count", "distribution", "the day's flights within the fixed bounds and the history's range",
         (), "a partial or duplicated drop"),
    Rule("required_fields", "validity", "the fields of a scheduled flight are present", schema.REQUIRED_COLUMNS,
         "a missing carrier, flight number, schedule or route"),
    Rule("flight_key_unique", "validity", "one row per carrier, flight number and origin", schema.FLIGHT_KEY,
         "duplicated rows"),
    Rule("in_batch_day", "validity", "every row is a flight of the batch's day", ("year", "month", "day"),
         "a row (or file) of another day"),
    Rule("time_hour_format", "validity", "time_hour is an ISO hour in UTC (YYYY-MM-DDTHH:00:00Z)", ("time_hour",),
         "another date format"),
    Rule("clock_times", "validity", "clock times are HHMM with minutes below 60",
         ("sched_dep_time", "sched_arr_time", "dep_time", "arr_time"), "1275, 2460"),
    Rule("whole_numbers", "validity", "counts, codes, clock times and minutes are whole numbers",
         (*schema.INTEGER_COLUMNS, "dep_time", "arr_time", "dep_delay", "arr_delay", "air_time"), "1.5 in distance"),
    Rule("value_ranges", "validity", "values within physical ranges",
         ("month", "day", "hour", "minute", "distance", "flight", "air_time", "dep_delay", "arr_delay"),
         "a 99,999-minute delay, a 9,999-mile flight"),
    Rule("weather_ranges", "validity", "weather readings within physical ranges (a few glitches allowed)",
         schema.WEATHER_COLUMNS, "a 500-degree temperature"),
    Rule("known_codes", "validity", "carriers and airports the reference tables know", ("origin", "dest", "carrier"),
         "an unknown airport or carrier"),
    Rule("schedule_parts", "consistency", "hour and minute are the hours and minutes of sched_dep_time",
         ("hour", "minute", "sched_dep_time"), "hour no longer agrees with sched_dep_time"),
    Rule("time_hour_matches", "consistency", "time_hour is the scheduled departure hour (New York) in UTC",
         ("time_hour", "year", "month", "day", "hour"), "time_hour shifted"),
    Rule("route_two_ends", "consistency", "a route's origin and destination differ", ("origin", "dest"),
         "origin equal to destination"),
    Rule("departure_delay_matches", "consistency",
         "dep_delay is dep_time - sched_dep_time (mod 24 h), and both or neither are present",
         ("dep_delay", "dep_time", "sched_dep_time"), "a delay that disagrees with the clock times"),
    Rule("arrival_delay_matches", "consistency", "arr_delay is arr_time - sched_arr_time (mod 24 h)",
         ("arr_delay", "arr_time", "sched_arr_time"), "a delay that disagrees with the clock times"),
    Rule("arrival_after_departure", "consistency",
         "an arrival time needs a departure time; an arrival delay needs departure, arrival and air times",
         ("arr_time", "dep_time", "arr_delay", "air_time"), "an arrival without a departure"),
    Rule("label_computable", "label",
         "an arrival delay is missing only for flights that did not arrive (cancelled or diverted: no air time)",
         ("arr_delay", "air_time"), "arrival delays lost for flights that did arrive (they would all count as late)"),
    Rule("outcome_null_share", "distribution",
         "the share of missing outcome values at most the history's highest + validate.null_share_margin",
         ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time", "tailnum"), "most tail numbers lost"),
    Rule("late_rate", "distribution", "the late rate at most the history's highest + validate.late_rate_margin",
         ("arr_delay",), "every flight late"),
    Rule("carrier_mix", "distribution",
         "no carrier's share of the day moves more than validate.mix_max_shift from the history's", ("carrier",),
         "a third of the flights relabelled to one carrier"),
    Rule("origin_mix", "distribution",
         "no origin airport's share of the day moves more than validate.mix_max_shift from the history's",
         ("origin",), "most flights moved to one airport"),
)  # fmt: skip
BY_ID = {rule.id: rule for rule in RULES}

# the outcome columns' missing share is learned (cancellations come in storms: up to 58% on
# 2013-02-08); the weather's is not checked: the weather table has gaps of whole days (none
# at all for 2013-12-31), and the model takes missing weather
NULL_SHARE_COLUMNS = BY_ID["outcome_null_share"].columns
MIX_COLUMNS = {"carrier_mix": "carrier", "origin_mix": "origin"}
NUMBER_COLUMNS = (*schema.INTEGER_COLUMNS, *schema.NUMERIC_COLUMNS)


# -- stage 1: schema ----------------------------------------------------------------------------
def schema_failures(batch: pd.DataFrame) -> list[str]:
    """Missing, renamed or extra columns, or text where numbers belong; [] when the batch has
    the contract's shape."""
    import pandas as pd

    have, want = list(batch.columns), list(schema.BATCH_COLUMNS)
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    if missing or extra:
        renamed = []
        for column in list(extra):
            close = difflib.get_close_matches(column, missing, n=1, cutoff=0.6)
            if close:
                renamed.append(f"{close[0]} -> {column}")
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        if renamed:
            parts.append(f"renamed? {', '.join(renamed)}")
        if len(have) == 1 and any(sep in have[0] for sep in ";\t|"):
            parts.append(f"one column named {have[0][:60]!r}: the wrong delimiter?")
        return [f"columns: {'; '.join(parts)}"]
    if len(batch) == 0:
        return ["row_count: no rows (a header without data)"]
    wrong = []
    for column in NUMBER_COLUMNS:
        series = batch[column]
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
            texts = [v for v in series.dropna().unique()[:50] if isinstance(v, str)][:3]
            wrong.append(f"{column} holds {series.dtype}" + (f" (e.g. {texts})" if texts else ""))
    for column in schema.STRING_COLUMNS:
        series = batch[column].dropna()
        if len(series) and not series.map(lambda v: isinstance(v, str)).all():
            wrong.append(
                f"{column} holds non-text values (e.g. {series[~series.map(lambda v: isinstance(v, str))].head(3).tolist()})"
            )
    return [f"column_types: {'; '.join(wrong)}"] if wrong else []


# -- stage 2: the rows ------------------------------------------------------------------------------
def _minutes(hhmm: pd.Series) -> pd.Series:
    return (hhmm // 100) * 60 + hhmm % 100


# scheduled clock times (HHMM) run from 0000 to 2359; actual ones from 0001 to 2400 (midnight)
CLOCKS: dict[str, tuple[int, int]] = {
    "sched_dep_time": (0, 2359), "sched_arr_time": (0, 2359), "dep_time": (1, 2400), "arr_time": (1, 2400),
}  # fmt: skip


def derive(batch: pd.DataFrame, day: dt.date, late_threshold_min: float = 15) -> pd.DataFrame:
    """The batch with one boolean column per cross-column rule (True where the row keeps the
    rule or the rule does not apply, e.g. a missing input), and the label for the late rate."""
    import numpy as np
    import pandas as pd

    derived: dict[str, pd.Series] = {}  # joined to the batch in one step (no fragmented frame)

    def holds(name: str, ok: Any) -> None:
        derived[f"{RULE_PREFIX}{name}"] = pd.Series(ok, index=batch.index).fillna(True).astype(bool)

    number = {c: pd.to_numeric(batch[c], errors="coerce") for c in NUMBER_COLUMNS}
    # set membership over large sets, per column (a GX value set of 1,440 clock times or
    # 1,462 airports costs more to serialise in every run than to check)
    for column, (low, high) in CLOCKS.items():
        value = number[column]
        holds(f"clock_times:{column}", value.isna() | ((value % 100 < 60) & value.between(low, high)))
    holds("known_codes:dest", batch["dest"].isna() | batch["dest"].isin(schema.known_airports()))
    holds(
        "in_batch_day",
        (number["year"] == day.year) & (number["month"] == day.month) & (number["day"] == day.day),
    )
    whole = pd.Series(True, index=batch.index)
    for column in BY_ID["whole_numbers"].columns:
        values = number[column]
        whole &= values.isna() | (values == np.round(values))
    holds("whole_numbers", whole)
    sched = number["sched_dep_time"]
    holds("schedule_parts", (number["hour"] == sched // 100) & (number["minute"] == sched % 100)
          | sched.isna() | number["hour"].isna() | number["minute"].isna())  # fmt: skip
    try:
        local = pd.to_datetime(
            pd.DataFrame({"year": number["year"], "month": number["month"], "day": number["day"], "hour": number["hour"]}),
            errors="coerce",
        )  # fmt: skip
        expected = local.dt.tz_localize("America/New_York", ambiguous="NaT", nonexistent="NaT").dt.tz_convert(
            "UTC"
        )
        stated = pd.to_datetime(batch["time_hour"], utc=True, errors="coerce", format="mixed")
        holds("time_hour_matches", (expected == stated) | expected.isna() | stated.isna())
    except (ValueError, TypeError, OverflowError):  # dates that do not exist: in_batch_day says so
        holds("time_hour_matches", True)
    holds(
        "route_two_ends", (batch["origin"] != batch["dest"]) | batch["origin"].isna() | batch["dest"].isna()
    )
    dep_time, dep_delay = number["dep_time"], number["dep_delay"]
    dep_gap = (_minutes(dep_time) - _minutes(sched) - dep_delay) % 1440
    holds(
        "departure_delay_matches", (dep_time.isna() == dep_delay.isna()) & ((dep_gap == 0) | dep_gap.isna())
    )
    arr_time, arr_delay, sched_arr = number["arr_time"], number["arr_delay"], number["sched_arr_time"]
    arr_gap = (_minutes(arr_time) - _minutes(sched_arr) - arr_delay) % 1440
    holds("arrival_delay_matches", (arr_gap == 0) | arr_gap.isna())
    air_time = number["air_time"]
    holds("arrival_after_departure", (arr_time.isna() | dep_time.notna())
          & (arr_delay.isna() | (dep_time.notna() & arr_time.notna() & air_time.notna())))  # fmt: skip
    holds("label_computable", arr_delay.notna() | air_time.isna())
    derived[LATE] = (arr_delay.isna() | (arr_delay > late_threshold_min)).astype("float64")
    return pd.concat([batch, pd.DataFrame(derived, index=batch.index)], axis=1)


# -- stage 3: batch statistics against the history ---------------------------------------------------
def statistics(batch: pd.DataFrame, late_threshold_min: float) -> dict[str, Any]:
    """What the history keeps of a validated day (a few hundred bytes)."""
    arr_delay = batch["arr_delay"]
    late = arr_delay.isna() | (arr_delay > late_threshold_min)
    return {
        "rows": len(batch),
        "null_share": {c: round(float(batch[c].isna().mean()), 5) for c in NULL_SHARE_COLUMNS},
        "late_rate": round(float(late.mean()), 5),
        "mix": {
            name: {str(k): round(float(v), 5) for k, v in batch[col].value_counts(normalize=True).items()}
            for name, col in MIX_COLUMNS.items()
        },
    }


@dataclass
class Bounds:
    """The limits of one day's statistics, learned from ``history`` (or fixed, until there is
    enough), and the day's values for the rules that compare distributions."""

    history_days: int
    learned: bool
    rows_min: float
    rows_max: float
    null_share_max: dict[str, float]
    late_rate_max: float
    mix_shift: dict[str, float]  # the day's largest share change per mix rule
    mix_max: float

    def parameters(self) -> dict[str, Any]:
        """GX expectation parameters (``{"$PARAMETER": name}`` in the suite)."""
        out: dict[str, Any] = {"rows_min": self.rows_min, "rows_max": self.rows_max,
                               "late_rate_max": self.late_rate_max, "mix_max": self.mix_max}  # fmt: skip
        for column, bound in self.null_share_max.items():
            out[f"non_null_min__{column}"] = round(max(0.0, 1.0 - bound), 6)
        return out


def bounds(batch: pd.DataFrame, history: list[dict[str, Any]], cfg: dict[str, Any]) -> Bounds:
    """Bounds for ``batch`` from the statistics of earlier validated days (oldest first)."""
    recent = history[-int(cfg["history_days"]) :]
    learned = len(recent) >= int(cfg["min_history_days"])
    low, high = float(cfg["min_rows"]), float(cfg["max_rows"])
    if not learned:
        return Bounds(len(recent), False, low, high, dict.fromkeys(NULL_SHARE_COLUMNS, 1.0), 1.0,
                      dict.fromkeys(MIX_COLUMNS, 0.0), 1.0)  # fmt: skip
    rows = [h["rows"] for h in recent]
    margin = float(cfg["rows_margin"])
    null_max = {c: min(1.0, max(h["null_share"][c] for h in recent) + float(cfg["null_share_margin"]))
                for c in NULL_SHARE_COLUMNS}  # fmt: skip
    late_max = min(1.0, max(h["late_rate"] for h in recent) + float(cfg["late_rate_margin"]))
    shifts = {}
    for name, column in MIX_COLUMNS.items():
        today = batch[column].value_counts(normalize=True)
        keys = set(today.index.astype(str)) | {k for h in recent for k in h["mix"][name]}
        mean = {k: sum(h["mix"][name].get(k, 0.0) for h in recent) / len(recent) for k in keys}
        shifts[name] = round(max(abs(float(today.get(k, 0.0)) - mean[k]) for k in keys), 5) if keys else 0.0
    return Bounds(len(recent), True, max(low, min(rows) * (1 - margin)), min(high, max(rows) * (1 + margin)),
                  null_max, late_max, shifts, float(cfg["mix_max_shift"]))  # fmt: skip


def with_statistics(derived: pd.DataFrame, limits: Bounds) -> pd.DataFrame:
    """The day's mix shifts as columns (one value repeated), for the suite's max checks."""
    out = derived
    for name, shift in limits.mix_shift.items():
        out[f"{STAT_PREFIX}{name}"] = shift
    return out
