"""A range of days validated in blocks (the row rules of a block's days in one GX run, their
per-batch rules in another, on a frame of one row per day) against every day in its own run (``validate.block_days: 1``, the
path of a nightly run): the same validated store and data version, the same reports, and for
broken days the same rejections, in one command each on the same landed files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.errors import BatchRejected
from pipelines.schema import REQUIRED_COLUMNS
from tests.conftest import make_workspace

DAYS = "2013-01-01:2013-01-14"  # bounds are learned from the 8th day on (min_history_days: 7)


def _clock_break(frame: pd.DataFrame) -> pd.DataFrame:
    """A row rule: one scheduled departure at 12:75."""
    frame = frame.copy()
    frame.loc[frame.index[3], "sched_dep_time"] = 1275
    return frame


def _partial_drop(frame: pd.DataFrame) -> pd.DataFrame:
    """A per-batch rule: a fifth of the day's flights (row_count against the history)."""
    return frame.head(len(frame) // 5)


def _one_wind_outlier(frame: pd.DataFrame) -> pd.DataFrame:
    """Within a tolerance: one wind speed of 1048 mph (as the source has on 2013-02-12),
    under the 1% of rows the weather ranges allow: the day passes."""
    frame = frame.copy()
    frame.loc[frame.index[7], "wind_speed"] = 1048.0
    return frame


def _pressure_gauge_broken(frame: pd.DataFrame) -> pd.DataFrame:
    """Beyond a tolerance: 5% of the day's rows with a pressure of 0 hPa."""
    frame = frame.copy()
    frame.loc[frame.index[: len(frame) // 20], "pressure"] = 0.0
    return frame


def _run(root: Path, block_days: int, breaks: dict[str, Any]) -> dict[str, Any]:
    from pipelines.config import Settings, load_params
    from pipelines.source import parse_days
    from pipelines.steps.ingest import ingest
    from pipelines.steps.validate import validate

    settings = Settings(project_dir=root)
    params = load_params(settings, [f"validate.block_days={block_days}"])
    days = parse_days(None, DAYS)
    ingest(settings, params, days)
    for day, corrupt in breaks.items():
        landed = root / "data/incoming" / f"{day}.parquet"
        corrupt(pd.read_parquet(landed)).to_parquet(landed, index=False)
    rejected = ""
    try:
        validate(settings, params, days)
    except BatchRejected as exc:
        rejected = str(exc).replace(str(root), "<ws>")
    reports = root / "reports/validation"
    quarantined = {}
    for report in sorted((root / "data/quarantine").glob("*/report.json")):
        found = json.loads(report.read_text())
        quarantined[report.parent.name] = (found["failures"], found["rules"], found["rows"])
    return {
        "rejected": rejected,
        "reports": {p.name: p.read_text() for p in sorted(reports.glob("*.json"))},
        "tracked": (root / "data/validated.dvc").read_text(),
        "validated": sorted(p.name for p in (root / "data/validated").glob("*.parquet")),
        "quarantined": quarantined,
        "docs": sorted(p.name for p in (reports / "docs").glob("*.html")),
    }


def _covered(pages: list[str]) -> list[str]:
    """The days the Data Docs pages cover, each once (``<day>.html`` or ``<first>..<last>.html``)."""
    import datetime as dt

    days = []
    for page in pages:
        first, _, last = page.removesuffix(".html").partition("..")
        day, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last or first)
        while day <= end:
            days.append(day.isoformat())
            day += dt.timedelta(days=1)
    return sorted(days) if len(days) == len(set(days)) else ["a day on two pages", *days]


@pytest.mark.parametrize(
    ("breaks", "rejected"),
    [
        pytest.param({}, {}, id="clean"),
        # day 5 breaks a row rule (its block goes the daily way); day 11 a per-batch rule
        pytest.param(
            {"2013-01-05": _clock_break, "2013-01-11": _partial_drop},
            {"2013-01-05": "clock_times", "2013-01-11": "row_count"},
            id="broken-days",
        ),
        # a tolerance: day 3 within it (its block's days then check it in their own runs),
        # day 10 beyond it (rejected as in a daily run)
        pytest.param(
            {"2013-01-03": _one_wind_outlier, "2013-01-10": _pressure_gauge_broken},
            {"2013-01-10": "weather_ranges"},
            id="weather-tolerance",
        ),
    ],
)
def test_blocks_give_the_outputs_of_daily_runs(
    tmp_path: Path, breaks: dict[str, Any], rejected: dict[str, str]
) -> None:
    daily = _run(make_workspace(tmp_path / "daily"), 1, breaks)
    blocks = _run(make_workspace(tmp_path / "blocks"), 7, breaks)
    # the Data Docs differ by design: a page per day checked alone, one per days checked together
    daily_docs, block_docs = daily.pop("docs"), blocks.pop("docs")
    assert blocks == daily
    assert len(daily["validated"]) == 14 - len(rejected)
    assert daily_docs == [f"{day.removesuffix('.parquet')}.html" for day in daily["validated"]]
    assert (
        _covered(block_docs)
        == _covered(daily_docs)
        == [d.removesuffix(".parquet") for d in daily["validated"]]
    )
    assert len(block_docs) < len(daily_docs), block_docs  # the days judged together share a page
    assert set(daily["quarantined"]) == set(rejected)
    for day, rule in rejected.items():
        assert day in daily["rejected"] and rule in daily["rejected"], daily["rejected"]
    if "2013-01-11" in rejected:
        learned = json.loads(daily["reports"]["2013-01-12.json"])["bounds"]
        assert learned["learned"] and learned["history_days"] == 9, learned  # neither day 5 nor day 11


def test_days_checked_together_share_one_page(tmp_path: Path) -> None:
    """Days validated together (their rows in one GX run, their per-batch rules in one run
    on a frame of one row per day) get one Data Docs page: every expectation of the suite,
    with GX's own rendering, and which days were checked how; each day's report counts the
    59 expectations it was held to, as a day checked alone."""
    root = make_workspace(tmp_path / "ws")
    _run(root, 31, {})
    assert sorted(p.name for p in (root / "reports/validation/docs").glob("*.html")) == [
        "2013-01-01..2013-01-14.html"
    ]
    page = (root / "reports/validation/docs/2013-01-01..2013-01-14.html").read_text()
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "row rules checked on the rows of 2013-01-01..2013-01-14 together" in text
    assert "the weather tolerance too (no row of them outside it)" in text
    assert "the per-batch rules of 2013-01-01..2013-01-14 in one run on a frame of one row per day" in text
    assert "Evaluated Expectations 59 Successful Expectations 59" in text, text[:3000]
    assert text.count("values must never be null") == len(REQUIRED_COLUMNS)  # row rules, as GX renders them
    for rule in ("row_count", "late_rate", "carrier_mix", "origin_mix", "outcome_null_share:tailnum"):
        assert (
            f"rule:{rule} Status Expectation Observed Value values must belong to this set: True" in text
        ), rule
    report = json.loads((root / "reports/validation/2013-01-09.json").read_text())
    assert report["expectations"] == 59 and report["bounds"]["learned"], report
