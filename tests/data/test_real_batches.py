"""Data tests on the real 2013 data: the suite accepts real days, including the awkward
ones, and the contract's assumptions hold for the whole year."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipelines import schema
from pipelines.source import PackageSource, join_weather, package_weather

VALIDATE = {"min_rows": 500, "max_rows": 5000, "max_abs_delay_min": 1500}

AWKWARD_DAYS = [
    dt.date(2013, 2, 12),  # EWR reports a 1,048 mph wind speed that morning
    dt.date(2013, 3, 8),  # the worst day of the year: 79% of flights late
    dt.date(2013, 11, 28),  # Thanksgiving: the fewest flights
    dt.date(2013, 12, 31),  # the weather table ends the day before
    dt.date(2013, 3, 10),  # daylight-saving change (time_hour is UTC)
]


@pytest.mark.parametrize("day", AWKWARD_DAYS, ids=str)
def test_suite_accepts_awkward_real_days(day: dt.date) -> None:
    """Each against the statistics of the four weeks before it, as `mlops validate` checks it."""
    from pipelines.config import Settings, load_params
    from pipelines.steps.validate import Validator
    from tests.data.test_contract import history, year

    params = load_params(Settings())
    validator = Validator(params.section("validate"), params.get("data.late_threshold_min"))
    checked = validator.check(year()[day].copy(), day, history(day))
    assert checked.failures == []
    assert checked.bounds is not None and checked.bounds.learned
    assert checked.gx is not None and checked.gx["success"] is True and len(checked.gx["results"]) > 50


def test_whole_year_meets_the_contract() -> None:
    """Cheap pandas checks of what the suite encodes, over all 365 days."""
    from pipelines.source import _package_flights

    flights = _package_flights()
    per_day = flights.groupby(["year", "month", "day"]).size()
    assert len(per_day) == 365
    assert per_day.min() >= VALIDATE["min_rows"] and per_day.max() <= VALIDATE["max_rows"]
    assert not flights.duplicated(list(schema.FLIGHT_KEY)).any()
    assert flights[list(schema.REQUIRED_COLUMNS)].notna().all().all()
    assert set(flights["carrier"]) <= schema.known_carriers()
    assert set(flights["dest"]) <= schema.known_airports()
    assert set(flights["origin"]) == set(schema.NYC_ORIGINS)
    assert flights["arr_delay"].abs().max() <= VALIDATE["max_abs_delay_min"]


def test_weather_join_matches_almost_every_flight() -> None:
    day = dt.date(2013, 7, 15)
    flights = PackageSource().fetch(day)
    batch = join_weather(flights)
    assert len(batch) == len(flights), "a left join keeps every flight"
    assert batch["temp"].notna().mean() > 0.97
    # the join is on UTC time_hour, not on the local year/month/day/hour columns
    row = batch.iloc[0]
    weather = package_weather()
    expected = weather[(weather.origin == row.origin) & (weather.time_hour == row.time_hour)]["temp"].iloc[0]
    assert row["temp"] == expected


def test_landed_batch_has_exactly_the_contract_columns() -> None:
    batch = join_weather(PackageSource().fetch(dt.date(2013, 1, 1)))
    assert list(batch.columns) == list(schema.BATCH_COLUMNS)
    assert isinstance(batch, pd.DataFrame)


def test_a_window_is_read_as_pandas_reads_it_file_by_file(january_template: Path, tmp_path: Path) -> None:
    """featurize reads its window as one Arrow dataset: the frame is the one per-file pandas
    reads and a concat give (values, dtypes, order, index, each row's batch_date), also in a
    folder whose name looks like a Hive partition, and with a batch whose schema differs."""
    from pipelines.steps.featurize import read_batches

    def by_pandas(batches: list[tuple[str, Path]]) -> pd.DataFrame:
        frames = [pd.read_parquet(path).assign(batch_date=label) for label, path in batches]
        return pd.concat(frames, ignore_index=True)

    stored = sorted((january_template / "data/validated").glob("2013-01-*.parquet"))
    assert len(stored) == 31
    batches = [(path.stem, path) for path in stored]
    read = read_batches(batches)
    pd.testing.assert_frame_equal(read, by_pandas(batches), check_exact=True)
    assert list(read["batch_date"].unique()) == [path.stem for path in stored]

    hive = tmp_path / "year=2013"  # Arrow would add a `year` column read from such a path
    hive.mkdir()
    for path in stored[:3]:
        shutil.copy(path, hive / path.name)
    copied = [(path.stem, hive / path.name) for path in stored[:3]]
    pd.testing.assert_frame_equal(read_batches(copied), by_pandas(copied), check_exact=True)

    odd = tmp_path / "2013-01-02.parquet"  # one batch with a column of another type
    pd.read_parquet(stored[1]).astype({"distance": "float64"}).to_parquet(odd, index=False)
    mixed = [batches[0], (odd.stem, odd), batches[2]]
    read = read_batches(mixed)
    pd.testing.assert_frame_equal(read, by_pandas(mixed), check_exact=True)
    assert read["distance"].dtype == "float64"


def test_a_stage_removes_what_a_killed_run_of_it_left_in_staging(january: Path) -> None:
    """`dvc repro` re-runs a killed stage alone (no `mlops retrain` around it to clean up):
    featurize removes the temporary files of processes that are gone (a real process, run
    and reaped, gives a pid that is gone) and keeps those of a live one."""
    import os
    import subprocess
    import sys

    from pipelines.config import Settings, load_params
    from pipelines.steps.featurize import featurize

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    staging = january / ".mlops/staging"
    staging.mkdir(parents=True, exist_ok=True)
    dead = [staging / f".train.parquet.{gone.pid}.x1.tmp", staging / f".model.joblib.{gone.pid}.x2.tmp"]
    live = staging / f".holdout.parquet.{os.getpid()}.x3.tmp"  # this process: alive
    for path in (*dead, live):
        path.write_bytes(b"half a file")
    settings = Settings(project_dir=january)
    featurize(settings, load_params(settings))
    assert not any(path.exists() for path in dead)
    assert live.exists(), "a live process's temporary file is left to it"
    assert sorted(p.name for p in staging.iterdir()) == [live.name]
