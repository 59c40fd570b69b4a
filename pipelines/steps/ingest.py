"""ingest: land one day's flights, joined with the origin's weather, as a batch file.

Idempotent per date: landing the same day again rewrites the same batch. A drop that
cannot be read is quarantined with the reason and the step fails for that day.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from pipelines.config import Params, Settings
from pipelines.errors import BatchRejected, StepError
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


def ingest(settings: Settings, params: Params, days: list[dt.date]) -> IngestResult:
    """Land each day of ``days`` into ``data/incoming/<day>.parquet``.

    Raises :class:`BatchRejected` (after landing the others) if any day was unreadable,
    and :class:`StepError` if a day has no drop at all.
    """
    import pandas as pd

    cfg = params.section("ingest")
    layout = Layout.of(settings, params.get("validate.store"))
    try:
        source = make_source(cfg["source"], cfg["landing_uri"], layout.incoming / ".landing")
    except ValueError as exc:
        raise StepError(str(exc)) from None
    result = IngestResult()
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
