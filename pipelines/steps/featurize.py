"""featurize: pick the training window and build the feature tables (a DVC stage).

The window is the last ``data.window_days`` validated days up to ``data.window_end`` (or
the newest validated day). Its batches are copied into ``data/window`` (a DVC output, so
``dvc.lock`` records the window's hash: the data version every run and model carries).
The last ``data.holdout_days`` days are the fresh holdout on which the gate scores both
the challenger and the champion; the earlier days are the training set.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import faults, schema
from pipelines.config import Params, Settings
from pipelines.errors import StepError
from pipelines.features import build_features, build_target
from pipelines.layout import Layout
from pipelines.storage import atomic_copy, atomic_write_parquet, atomic_write_text, clean_stale_temp

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class Window:
    start: str
    end: str
    days: int
    train_start: str
    train_end: str
    holdout_start: str
    holdout_end: str
    train_rows: int
    holdout_rows: int
    train_late_rate: float
    holdout_late_rate: float


def select_window(
    validated: list[dt.date],
    window_days: int,
    window_end: str,
    holdout_days: int,
    max_gap_days: int = 2,
    min_window_days: int = 14,
) -> list[dt.date]:
    """The training window: the most recent run of validated days up to ``window_end`` ("" =
    newest), at most ``window_days`` long, in which consecutive days are at most
    ``max_gap_days`` calendar days apart beyond the next (a quarantined day is a gap of one).
    A window never spans a hole in the history (e.g. January and then July): it stops at the
    first larger gap, and is refused if that leaves fewer than ``min_window_days`` days (or
    ``window_days``, if less)."""
    if window_end:
        end = dt.date.fromisoformat(window_end)
        validated = [d for d in validated if d <= end]
    chosen = validated[-1:]
    for day in reversed(validated[:-1]):
        if len(chosen) == window_days or (chosen[0] - day).days - 1 > max_gap_days:
            break
        chosen.insert(0, day)
    if len(chosen) <= holdout_days:
        raise StepError(
            f"training window has {len(chosen)} validated day(s) up to {window_end or 'now'}; "
            f"need more than data.holdout_days={holdout_days} (ingest and validate more days)"
        )
    needed = min(window_days, min_window_days)
    if len(chosen) < needed:
        before = [d for d in validated if d < chosen[0]]
        hole = (
            f"; before {chosen[0]} the history stops at {before[-1]} ({(chosen[0] - before[-1]).days - 1} days missing)"
            if before
            else ""
        )
        raise StepError(
            f"training window {chosen[0]}..{chosen[-1]} has {len(chosen)} contiguous validated day(s), "
            f"fewer than {needed} (data.min_window_days){hole}: validate the missing days or set data.window_end"
        )
    return chosen


def read_batches(batches: list[tuple[str, Path]]) -> pd.DataFrame:
    """The batches one after the other, each row with its ``batch_date`` (the label it comes
    with), and a fresh index: the frame ``pd.concat([pd.read_parquet(path).assign(batch_date=
    label) ...], ignore_index=True)`` gives.

    Read as one Arrow dataset and converted to pandas once (the year's 365 files: ~0.5 s
    against ~2 s file by file, most of it 365 conversions). Batches whose schemas differ
    (which validation does not let into the store) are read file by file, as pandas
    reconciles them."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    paths = [str(path) for _, path in batches]
    metadata = [pq.read_metadata(path) for path in paths]
    schemas = [m.schema.to_arrow_schema() for m in metadata]
    if any(not s.equals(schemas[0], check_metadata=False) for s in schemas[1:]):
        frames = [pd.read_parquet(path).assign(batch_date=label) for label, path in batches]
        return pd.concat(frames, ignore_index=True)
    frame = pq.read_table(paths, partitioning=None).to_pandas()
    frame.index = pd.RangeIndex(len(frame))
    labels = np.array([label for label, _ in batches], dtype=object)
    frame["batch_date"] = np.repeat(labels, [m.num_rows for m in metadata])
    return frame


def featurize(settings: Settings, params: Params) -> Window:
    cfg = params.section("data")
    layout = Layout.of(settings, params.get("validate.store"))
    clean_stale_temp(layout.staging)  # what a killed run of a stage left (dvc repro re-runs it alone)
    days = select_window(layout.validated_days(), cfg["window_days"], cfg["window_end"], cfg["holdout_days"],
                         cfg["max_gap_days"], cfg["min_window_days"])  # fmt: skip
    if len(days) < cfg["window_days"]:
        log.warning("featurize: the window has %d contiguous validated days, not the %d asked for (it starts "
                    "after a gap in the history)", len(days), cfg["window_days"])  # fmt: skip

    if layout.window.exists():
        shutil.rmtree(layout.window)
    for day in days:
        atomic_copy(layout.validated_batch(day), layout.window / f"{day}.parquet", staging=layout.staging)
    faults.point("featurize.window-copied")
    frame = read_batches([(day.isoformat(), layout.window / f"{day}.parquet") for day in days])

    table = build_features(frame)
    table[schema.TARGET] = build_target(frame, cfg["late_threshold_min"])
    table["batch_date"] = frame["batch_date"]
    holdout_from = days[-cfg["holdout_days"]].isoformat()
    is_holdout = table["batch_date"] >= holdout_from
    train, holdout = table[~is_holdout], table[is_holdout]
    atomic_write_parquet(layout.features / "train.parquet", train, staging=layout.staging)
    atomic_write_parquet(layout.features / "holdout.parquet", holdout, staging=layout.staging)

    window = Window(
        start=days[0].isoformat(), end=days[-1].isoformat(), days=len(days),
        train_start=days[0].isoformat(), train_end=days[-cfg["holdout_days"] - 1].isoformat(),
        holdout_start=holdout_from, holdout_end=days[-1].isoformat(),
        train_rows=len(train), holdout_rows=len(holdout),
        train_late_rate=round(float(train[schema.TARGET].mean()), 4),
        holdout_late_rate=round(float(holdout[schema.TARGET].mean()), 4),
    )  # fmt: skip
    atomic_write_text(layout.reports / "featurize.json", json.dumps(asdict(window), indent=2))
    log.info("featurize: window %s..%s (%d days): %d train rows, %d holdout rows",
             window.start, window.end, window.days, window.train_rows, window.holdout_rows)  # fmt: skip
    return window
