"""Data tests through the real commands: corrupted drops in the landing zone are quarantined
with one line naming the broken rule, and neither the DVC-tracked data nor the registry's
champion changes.

Each case takes a real day of 2013 flights, corrupts it, drops it in a landing zone and runs
the real `mlops ingest` + `mlops validate` (Great Expectations, DVC). Every rule of the
contract is broken once here by its generator from tests/data/test_contract.py (which breaks
each many more times in-process); the hand-written cases are the corruptions users reported
(four of them used to be accepted) and drops that cannot be read at all.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines import contract
from tests.conftest import make_workspace, train_champion
from tests.data.test_contract import BREAKERS

DAY0 = dt.date(2013, 2, 1)


def real_day(day: dt.date) -> pd.DataFrame:
    from pipelines.source import PackageSource

    return PackageSource().fetch(day)


def as_parquet(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path.with_suffix(".parquet"), index=False)
    return path.with_suffix(".parquet")


def as_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path.with_suffix(".csv"), index=False)
    return path.with_suffix(".csv")


def missing_column(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(f.drop(columns=["carrier"]), p)


def renamed_column(f, p):  # type: ignore[no-untyped-def]
    return as_csv(f.rename(columns={"sched_dep_time": "scheduled_dep_time"}), p)


def wrong_dtype(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    f["arr_delay"] = f["arr_delay"].astype(object)
    f.loc[f.index[:7], "arr_delay"] = "late"
    return as_csv(f, p)


def null_keys(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    f["flight"] = f["flight"].astype("float64")
    f.loc[f.index[:5], "flight"] = None
    return as_parquet(f, p)


def out_of_range_delay(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    f.loc[f.index[:3], "arr_delay"] = 99999.0
    return as_parquet(f, p)


def unknown_airport(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    f.loc[f.index[:4], "dest"] = "XQZ"
    return as_parquet(f, p)


def duplicated_rows(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(pd.concat([f, f.head(25)], ignore_index=True), p)


def wrong_date(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(real_day(DAY0 + dt.timedelta(days=20)), p)


def header_only(f, p):  # type: ignore[no-untyped-def]
    return as_csv(f.head(0), p)


def truncated_csv(f, p):  # type: ignore[no-untyped-def]
    path = as_csv(f, p)
    text = path.read_text()
    path.write_text(text[: len(text) // 3])  # cut mid-row: a partial drop
    return path


def extra_column(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(f.assign(passenger_name="x"), p)


def too_few_rows(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(f.head(40), p)


# -- the four that used to be accepted ---------------------------------------------------------
def arr_delay_lost(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    f.loc[f["air_time"].notna(), "arr_delay"] = None  # every arrived flight would count as late
    return as_parquet(f, p)


def clock_minutes_over_59(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    rows = f.index[f["sched_arr_time"].between(100, 2200)][:5]
    f.loc[rows, "sched_arr_time"] = (f.loc[rows, "sched_arr_time"] // 100) * 100 + 75  # e.g. 1275
    return as_csv(f, p)


def origin_is_dest(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    f.loc[f.index[:3], "dest"] = f.loc[f.index[:3], "origin"]
    return as_parquet(f, p)


def hour_disagrees(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    f.loc[f.index[:6], "hour"] = (f.loc[f.index[:6], "hour"] + 1) % 24
    return as_parquet(f, p)


# -- drops that cannot be read -------------------------------------------------------------------
def empty_file(f, p):  # type: ignore[no-untyped-def]
    path = p.with_suffix(".csv")
    path.write_bytes(b"")
    return path


def truncated_parquet(f, p):  # type: ignore[no-untyped-def]
    path = as_parquet(f, p)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def gzipped_csv(f, p):  # type: ignore[no-untyped-def]
    path = p.with_suffix(".csv")
    path.write_bytes(gzip.compress(f.to_csv(index=False).encode()))
    return path


def binary_junk(f, p):  # type: ignore[no-untyped-def]
    path = p.with_suffix(".csv")
    path.write_bytes(bytes(range(256)) * 40)
    return path


def semicolons(f, p):  # type: ignore[no-untyped-def]
    path = p.with_suffix(".csv")
    f.to_csv(path, index=False, sep=";")
    return path


def parquet_named_csv(f, p):  # type: ignore[no-untyped-def]
    path = as_parquet(f, p)
    return path.rename(path.with_suffix(".csv"))


# (corruption, where it is caught, text the one-line message must contain)
CASES: list[tuple[Callable[..., Path], str, str]] = [
    (missing_column, "validation", "columns (exactly the contract's columns): missing columns ['carrier']"),
    (renamed_column, "validation", "renamed? sched_dep_time -> scheduled_dep_time"),
    (wrong_dtype, "validation", "column_types (number columns hold numbers, text columns hold text): arr_delay"),
    (null_keys, "validation", "required_fields (the fields of a scheduled flight are present): flight: 5 unexpected"),
    (out_of_range_delay, "validation", "value_ranges (values within physical ranges): arr_delay: 3 unexpected"),
    (unknown_airport, "validation", "known_codes (carriers and airports the reference tables know): dest: 4 unexpected"),
    (duplicated_rows, "validation", "flight_key_unique (one row per carrier, flight number and origin)"),
    (wrong_date, "validation", "in_batch_day (every row is a flight of the batch's day)"),
    (header_only, "validation", "row_count (the day's flights within the fixed bounds and the history's range): no rows"),
    (truncated_csv, "validation", "row_count ("),
    (extra_column, "validation", "unexpected columns ['passenger_name']"),
    (too_few_rows, "validation", "row_count (the day's flights within the fixed bounds and the history's range): 40 rows"),
    (arr_delay_lost, "validation", "label_computable (an arrival delay is missing only for flights that did not arrive"),
    (clock_minutes_over_59, "validation", "clock_times (clock times are HHMM with minutes below 60): sched_arr_time: 5 unexpected"),
    (origin_is_dest, "validation", "route_two_ends (a route's origin and destination differ): 3 of"),
    (hour_disagrees, "validation", "schedule_parts (hour and minute are the hours and minutes of sched_dep_time): 6 of"),
    (empty_file, "ingest", "the file is empty"),
    (truncated_parquet, "ingest", "unreadable"),
    (gzipped_csv, "ingest", "the file is gzip-compressed data (decompress it first), not CSV text"),
    (binary_junk, "ingest", "the file is binary data (NUL bytes), not CSV text"),
    (semicolons, "ingest", "one column: the header is semicolon-separated"),
    (parquet_named_csv, "ingest", "the file is Parquet data named .csv (rename it .parquet)"),
]  # fmt: skip


@pytest.fixture(scope="module")
def served(january_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """January validated, a champion in the registry, and a landing zone to drop into."""
    root = tmp_path_factory.mktemp("bad") / "ws"
    shutil.copytree(january_template, root, symlinks=True)
    (root / "landing").mkdir()
    train_champion(root)
    return root


def _state(root: Path) -> dict[str, object]:
    from pipelines.config import Settings
    from pipelines.registry import CHAMPION, Registry

    champion = Registry(Settings(project_dir=root), "flight-delay").alias(CHAMPION)
    return {
        "dvc": (root / "data/validated.dvc").read_text(),
        "validated": sorted(p.name for p in (root / "data/validated").iterdir()),
        "champion": champion.version if champion else None,
    }


def drop_and_validate(served: Path, run_cli, day: dt.date, path: Path, caught_by: str) -> str:  # type: ignore[no-untyped-def]
    """Ingest the drop, validate it (unless ingest refused it); returns the failure line."""
    landing = ["--set", "ingest.source=landing", "--set", f"ingest.landing_uri=file://{served / 'landing'}"]
    code, _, err = run_cli("ingest", "--date", day.isoformat(), *landing)
    if caught_by == "validation":
        assert code == 0, err
        code, _, err = run_cli("validate", "--date", day.isoformat())
    assert code == 1, err[-2000:]
    line = err.strip().splitlines()[-1]
    step = "validate" if caught_by == "validation" else "ingest"
    assert line.startswith(f"mlops {step}: failed: batch {day}"), line
    assert f"quarantined in {served / 'data/quarantine' / day.isoformat()}" in line
    return line


@pytest.mark.parametrize(("corrupt", "caught_by", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_corrupted_batch_is_quarantined(
    served: Path, monkeypatch: pytest.MonkeyPatch, run_cli, corrupt, caught_by: str, message: str
) -> None:
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(served))
    monkeypatch.chdir(served)
    day = DAY0 + dt.timedelta(days=CASES.index(next(c for c in CASES if c[0] is corrupt)))
    dropped = corrupt(real_day(day), served / "landing" / day.isoformat())
    before = _state(served)
    line = drop_and_validate(served, run_cli, day, dropped, caught_by)
    assert message in line, line

    folder = served / "data/quarantine" / day.isoformat()
    report = json.loads((folder / "report.json").read_text())
    assert report["batch_date"] == day.isoformat() and report["failures"]
    assert any(message.split(" (")[0] in f for f in report["failures"]) or message in " ".join(
        report["failures"]
    )
    received = list(folder.glob("received.*")) or list(folder.glob("batch.*"))
    assert received, "the drop is kept as it was received"
    if caught_by == "validation":
        assert (folder / "received").with_suffix(dropped.suffix).read_bytes() == dropped.read_bytes()
        assert (folder / "batch.parquet").exists(), "and as parsed, next to it"
        assert list((folder / "docs").rglob("*.html")), "GX data docs are written for a person to read"
    # nothing of the batch reached the DVC-tracked data or the registry
    assert _state(served) == before
    assert not (served / "data/incoming" / f"{day}.parquet").exists()
    assert not list((served / "data/incoming").glob(f"{day}.received*"))


@pytest.mark.parametrize("rule", [r.id for r in contract.RULES])
@settings(max_examples=1, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_every_rule_broken_through_the_commands(
    served: Path, run_cli, monkeypatch: pytest.MonkeyPatch, rule: str, data: st.DataObject
) -> None:  # type: ignore[no-untyped-def]
    """One generated breakage per rule, landed as ingest lands a batch: `mlops validate`
    quarantines it with a line naming the rule; the store, its data version and the champion
    are untouched. (The batch is written where ingest writes it: ingest re-joins the weather,
    which would undo a broken weather reading.)"""
    from pipelines.source import join_weather

    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(served))
    monkeypatch.chdir(served)
    day = dt.date(2013, 3, 1) + dt.timedelta(days=[r.id for r in contract.RULES].index(rule))
    from pipelines.steps.ingest import _normalise_object_columns

    broken = BREAKERS[rule](join_weather(real_day(day)), data.draw)
    (served / "data/incoming").mkdir(parents=True, exist_ok=True)
    # as ingest writes it: a column of mixed values is kept as text
    _normalise_object_columns(broken, pd).to_parquet(served / "data/incoming" / f"{day}.parquet", index=False)
    before = _state(served)
    code, _, err = run_cli("validate", "--date", day.isoformat())
    assert code == 1, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(
        f"mlops validate: failed: batch {day} failed validation (1 problem(s)): {rule} ("
    ), line
    assert f"quarantined in {served / 'data/quarantine' / day.isoformat()}" in line
    assert json.loads((served / "data/quarantine" / str(day) / "report.json").read_text())["rules"] == [rule]
    assert _state(served) == before


def test_validate_says_a_day_was_quarantined_at_ingest(served: Path, monkeypatch, run_cli) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(served))
    monkeypatch.chdir(served)
    day = dt.date(2013, 4, 2)
    gzipped_csv(real_day(day), served / "landing" / day.isoformat())
    drop_and_validate(served, run_cli, day, served / "landing" / f"{day}.csv", "ingest")
    code, _, err = run_cli("validate", "--date", day.isoformat())
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert f"batch {day} was quarantined at ingest (" in line and "gzip" in line, line
    assert (
        f"run `mlops ingest --date {day}` again" in line
        and str(served / "data/quarantine" / str(day)) in line
    )


def test_a_store_outage_during_a_quarantine_reports_both(served: Path, monkeypatch, run_cli) -> None:  # type: ignore[no-untyped-def]
    """The store is unreachable when a rejected batch's quarantine is published: the line
    gives the rejection reason and the storage failure, not only the latter."""
    from tests.services import free_port

    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(served))
    monkeypatch.chdir(served)
    day = dt.date(2013, 4, 3)
    origin_is_dest(real_day(day), served / "landing" / day.isoformat())
    landing = ["--set", "ingest.source=landing", "--set", f"ingest.landing_uri=file://{served / 'landing'}"]
    assert run_cli("ingest", "--date", day.isoformat(), *landing)[0] == 0
    for key, value in {"MLOPS_STORE_URI": "s3://nowhere/store", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                       "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "MLOPS_S3_MAX_ATTEMPTS": "1",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    code, _, err = run_cli("validate", "--date", day.isoformat())
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert "route_two_ends (a route's origin and destination differ)" in line, line
    assert "and publishing the quarantine failed: cannot write s3://nowhere/store/quarantine/" in line, line


def test_clean_drop_from_landing_zone_joins_tracked_data(
    served: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(served))
    monkeypatch.chdir(served)
    day = dt.date(2013, 5, 1)
    as_csv(real_day(day), served / "landing" / day.isoformat())
    before = _state(served)
    landing = ["--set", "ingest.source=landing", "--set", f"ingest.landing_uri=file://{served / 'landing'}"]
    assert run_cli("ingest", "--date", str(day), *landing)[0] == 0
    code, out, err = run_cli("validate", "--date", str(day))
    assert code == 0, err
    after = _state(served)
    assert after["validated"] == [*before["validated"], f"{day}.parquet"]
    assert after["dvc"] != before["dvc"], "dvc add recorded a new data version"
    assert json.loads(out)["data_version"] in str(after["dvc"])
    batch = pd.read_parquet(served / "data/validated" / f"{day}.parquet")
    assert batch["temp"].notna().mean() > 0.95, "weather at the origin was joined"
    report = json.loads((served / "reports/validation" / f"{day}.json").read_text())
    assert report["statistics"]["rows"] == len(batch) and report["bounds"]["learned"], "kept for the history"
    # a passed batch has its GX Data Docs page too (the nightly DAG's validate log links it)
    page = served / "reports/validation/docs" / f"{day}.html"
    html = page.read_text()
    assert "values must never be null" in html and "Succeeded" in html, html[:500]
    assert not list((served / "data/incoming").glob(f"{day}*")), "the drop as received is gone once validated"


def test_real_days_of_every_month_pass_the_commands(
    served: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    """The first days of every month after January, replayed and validated in one command each."""
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(served))
    monkeypatch.chdir(served)
    for month in range(2, 13):
        days = f"2013-{month:02d}-25:2013-{month:02d}-27"
        assert run_cli("ingest", "--dates", days)[0] == 0
        code, out, err = run_cli("validate", "--dates", days)
        assert code == 0, err[-2000:]
        assert len(json.loads(out)["passed"]) == 3


def test_rejected_redrop_keeps_the_validated_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    """A day already validated, dropped again corrupted, keeps its validated batch."""
    root = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(root))
    monkeypatch.chdir(root)
    day = dt.date(2013, 6, 3)
    landing = ["--set", "ingest.source=landing", "--set", f"ingest.landing_uri=file://{root / 'landing'}"]
    (root / "landing").mkdir()
    good = as_parquet(real_day(day), root / "landing" / day.isoformat())
    assert run_cli("ingest", "--date", str(day), *landing)[0] == 0
    assert run_cli("validate", "--date", str(day))[0] == 0
    kept = (root / "data/validated" / f"{day}.parquet").read_bytes()
    tracked = (root / "data/validated.dvc").read_text()
    unknown_airport(real_day(day), good.with_suffix(""))
    assert run_cli("ingest", "--date", str(day), *landing)[0] == 0
    code, _, err = run_cli("validate", "--date", str(day))
    assert code == 1 and "dest" in err
    assert (root / "data/validated" / f"{day}.parquet").read_bytes() == kept
    assert (root / "data/validated.dvc").read_text() == tracked
