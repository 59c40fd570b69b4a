"""Data tests: corrupted drops in the landing zone are quarantined with a clear message,
and neither the DVC-tracked data nor the registry's champion changes.

Each case takes a real day of 2013 flights, corrupts it one way, drops it in a landing
zone and runs the real `mlops ingest` + `mlops validate` (Great Expectations, DVC).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_workspace, train_champion

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


def unknown_carrier(f, p):  # type: ignore[no-untyped-def]
    f = f.copy()
    f.loc[f.index[:2], "carrier"] = "ZZ"
    return as_csv(f, p)


def duplicated_rows(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(pd.concat([f, f.head(25)], ignore_index=True), p)


def wrong_date(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(real_day(DAY0 + dt.timedelta(days=20)), p)


def empty_file(f, p):  # type: ignore[no-untyped-def]
    path = p.with_suffix(".csv")
    path.write_bytes(b"")
    return path


def header_only(f, p):  # type: ignore[no-untyped-def]
    return as_csv(f.head(0), p)


def truncated_parquet(f, p):  # type: ignore[no-untyped-def]
    path = as_parquet(f, p)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_csv(f, p):  # type: ignore[no-untyped-def]
    path = as_csv(f, p)
    text = path.read_text()
    path.write_text(text[: len(text) // 3])  # cut mid-row: a partial drop
    return path


def extra_column(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(f.assign(passenger_name="x"), p)


def too_few_rows(f, p):  # type: ignore[no-untyped-def]
    return as_parquet(f.head(40), p)


# (corruption, where it is caught, text the one-line message must contain)
CASES: list[tuple[Callable[..., Path], str, str]] = [
    (missing_column, "validation", "missing columns ['carrier']"),
    (wrong_dtype, "validation", "expect_column_values_to_be_in_type_list(arr_delay)"),
    (null_keys, "validation", "expect_column_values_to_not_be_null(flight): 5 unexpected"),
    (out_of_range_delay, "validation", "expect_column_values_to_be_between(arr_delay): 3 unexpected"),
    (unknown_airport, "validation", "expect_column_values_to_be_in_set(dest): 4 unexpected"),
    (unknown_carrier, "validation", "expect_column_values_to_be_in_set(carrier): 2 unexpected"),
    (
        duplicated_rows,
        "validation",
        "expect_compound_columns_to_be_unique(year,month,day,carrier,flight,origin)",
    ),
    (wrong_date, "validation", "expect_column_values_to_be_in_set(day)"),
    (empty_file, "ingest", "the file is empty"),
    (header_only, "validation", "expect_table_row_count_to_be_between(table): observed 0"),
    (truncated_parquet, "ingest", "unreadable"),
    (truncated_csv, "validation", "expect_table_row_count_to_be_between"),
    (extra_column, "validation", "unexpected columns ['passenger_name']"),
    (too_few_rows, "validation", "expect_table_row_count_to_be_between(table): observed 40"),
]


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


@pytest.mark.parametrize(("corrupt", "caught_by", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_corrupted_batch_is_quarantined(
    served: Path, monkeypatch: pytest.MonkeyPatch, run_cli, corrupt, caught_by: str, message: str
) -> None:
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(served))
    monkeypatch.chdir(served)
    day = DAY0 + dt.timedelta(days=CASES.index(next(c for c in CASES if c[0] is corrupt)))
    corrupt(real_day(day), served / "landing" / day.isoformat())
    before = _state(served)
    landing = ["--set", "ingest.source=landing", "--set", f"ingest.landing_uri=file://{served / 'landing'}"]

    code, _, err = run_cli("ingest", "--date", day.isoformat(), *landing)
    if caught_by == "validation":
        assert code == 0, err
        code, _, err = run_cli("validate", "--date", day.isoformat())

    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(
        f"mlops {'validate' if caught_by == 'validation' else 'ingest'}: failed: batch {day}"
    )
    assert message in line, line
    assert f"quarantined in {served / 'data/quarantine' / day.isoformat()}" in line

    folder = served / "data/quarantine" / day.isoformat()
    report = json.loads((folder / "report.json").read_text())
    assert report["batch_date"] == day.isoformat() and report["failures"]
    assert any(message.split("(")[0] in f for f in report["failures"]) or message in " ".join(
        report["failures"]
    )
    assert list(folder.glob("batch.*")), "the rejected batch is kept for inspection"
    if caught_by == "validation":
        assert report["great_expectations"]["success"] is False
        assert list((folder / "docs").rglob("*.html")), "GX data docs are written for a person to read"
    # nothing of the batch reached the DVC-tracked data or the registry
    assert _state(served) == before
    assert not (served / "data/incoming" / f"{day}.parquet").exists()


def test_clean_drop_from_landing_zone_joins_tracked_data(
    served: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(served))
    monkeypatch.chdir(served)
    day = dt.date(2013, 3, 1)
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
