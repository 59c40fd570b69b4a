"""ingest: land one day's flights, joined with the origin's weather, as a batch file.

Idempotent per date: landing the same day again rewrites the same batch. A drop that
cannot be read is quarantined with the reason and the step fails for that day.

``--date next`` is the replay clock of a scheduled run: the day after the newest day already
landed (validated or quarantined), or a day still waiting in ``data/incoming/`` (a run that
did not finish), or ``ingest.replay_start`` on an empty store; past the source's last day it
exits 99 (nothing to replay: downstream skipped). So unpausing the DAG, a catch-up or a
backfill never lands a far-away day: the history stays contiguous.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from pipelines.config import Params, Settings
from pipelines.errors import BatchRejected, Skipped, StepError
from pipelines.layout import Layout
from pipelines.publish import publish_tree
from pipelines.quarantine import quarantine_batch, rejection_line
from pipelines.source import MissingBatch, UnreadableBatch, join_weather, make_source
from pipelines.storage import StorageError, atomic_copy, atomic_write_parquet

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    landed: dict[str, int] = field(default_factory=dict)  # day -> rows
    rejected: dict[str, str] = field(default_factory=dict)  # day -> reason line
    date: str | None = None  # the day of a one-day run (what the next tasks of a nightly run use)
    dates: str | None = None  # FIRST:LAST of a range run (what the next tasks of a range run use)


def next_day(layout: Layout, replay_start: str) -> dt.date:
    """The replay clock: a landed day still waiting for validation, else the day after the
    newest day that was validated or quarantined, else ``replay_start``."""
    waiting = (
        sorted(dt.date.fromisoformat(p.stem) for p in layout.incoming.glob("????-??-??.parquet"))
        if layout.incoming.is_dir()
        else []
    )
    if waiting:
        return waiting[0]
    landed = [*layout.validated_days(), *layout.quarantined_days()]
    return max(landed) + dt.timedelta(days=1) if landed else dt.date.fromisoformat(replay_start)


def ingest(settings: Settings, params: Params, days: list[dt.date] | None) -> IngestResult:
    """Land each day of ``days`` into ``data/incoming/<day>.parquet``.

    ``days`` None: the replay clock's next day (see the module docstring). Raises
    :class:`BatchRejected` (after landing the others) if any day was unreadable, and
    :class:`StepError` if a day has no drop at all.
    """
    import pandas as pd

    cfg = params.section("ingest")
    layout = Layout.of(settings, params.get("validate.store"))
    try:
        source = make_source(cfg["source"], cfg["landing_uri"], layout.incoming / ".landing")
    except ValueError as exc:
        raise StepError(str(exc)) from None
    result = IngestResult()
    if days is None:
        day = next_day(layout, cfg["replay_start"])
        last = source.last_day()
        if last is not None and day > last:
            raise Skipped(f"nothing left to replay: the source's last day is {last} and it was landed")
        log.info("ingest: the replay clock's next day is %s", day)
        days = [day]
    if len(days) == 1:
        result.date = days[0].isoformat()
    else:
        result.dates = f"{days[0]}:{days[-1]}"
    for day in days:
        try:
            flights = source.fetch(day)
        except MissingBatch as exc:
            raise StepError(str(exc)) from None
        except UnreadableBatch as exc:
            problem = f"unreadable drop {exc.path.name if exc.path else ''}: {exc.reason}"
            folder = quarantine_batch(layout, day, exc.path, "ingest", [problem])
            line = rejection_line(day, "ingest", [problem], folder)
            try:
                publish_tree(settings, f"quarantine/{day}", folder)
            except StorageError as store_error:  # the rejection is reported, not replaced
                line += f"; and publishing the quarantine failed: {store_error}"
            result.rejected[day.isoformat()] = line
            log.error("%s", line)
            continue
        batch = join_weather(_normalise_object_columns(flights, pd))
        raw = source.raw_file(day)
        for stale in layout.incoming.glob(f"{day}.received*"):  # a previous drop of the day
            stale.unlink()
        if raw is not None:  # the drop as received, kept until it is validated (or quarantined with it)
            atomic_copy(raw, layout.incoming / f"{day}.received{raw.suffix}")
        atomic_write_parquet(layout.incoming_batch(day), batch)
        for ext in (".parquet", ".csv"):  # the copy fetched from an s3:// landing zone
            (layout.incoming / ".landing" / f"{day}{ext}").unlink(missing_ok=True)
        result.landed[day.isoformat()] = len(batch)
        log.info("ingest %s: landed %d flights from %s", day, len(batch), cfg["source"])
    if result.rejected:
        raise BatchRejected(" | ".join(result.rejected.values()))
    return result


def _normalise_object_columns(frame, pd):  # type: ignore[no-untyped-def]
    """Text columns holding mixed values (e.g. a number column with a stray word) are kept
    as text, so the batch can be written and validation can name the column."""
    frame = frame.copy()
    for column in frame.columns[frame.dtypes.map(lambda d: d.kind == "O")]:
        values = frame[column]
        if not values.map(lambda v: v is None or isinstance(v, str) or v != v).all():
            frame[column] = values.map(lambda v: None if v is None or v != v else str(v))
    return frame
