"""The prediction log: every answer (champion, canary, shadow) buffered and written in
batches as ``data/predictions/served/<day>/<file>.parquet``, published to the store."""

import collections
import datetime as dt
import logging
import os
import socket
import threading
from typing import Any

from pipelines import schema
from pipelines.config import Settings
from pipelines.layout import Layout
from pipelines.serving.metrics import Metrics

log = logging.getLogger(__name__)


class PredictionLog:
    """Predictions buffered in memory and written in batches, in monitor's columns."""

    def __init__(self, settings: Settings, layout: Layout, metrics: Metrics, flush_rows: int) -> None:
        self.layout, self.metrics = layout, metrics
        self.store = settings.store()  # one client for the life of the server, not one per flush
        self.flush_rows = flush_rows
        self.max_pending = flush_rows * 20  # bounded when the store is down for long
        self._pending: collections.deque[tuple[Any, Any, str, str, str, str]] = collections.deque()
        self._rows = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.wake = threading.Event()
        self._seq = 0
        self._stem = f"{socket.gethostname()}-{os.getpid()}"

    def add(
        self, records: list[dict[str, Any]], predictions: Any, version: str, role: str, request_id: str
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            self._pending.append((records, predictions, version, role, request_id, now.isoformat()))
            self._rows += len(records)
            while self._rows > self.max_pending and len(self._pending) > 1:
                dropped = self._pending.popleft()
                self._rows -= len(dropped[0])
                self.metrics.log_rows.labels("dropped").inc(len(dropped[0]))
            if self._rows >= self.flush_rows:
                self.wake.set()

    def flush(self) -> int:
        """Write what is pending, one file per UTC day; what fails stays pending."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = list(self._pending), collections.deque()
                self._rows = 0
            by_day: dict[str, list[tuple[Any, Any, str, str, str, str]]] = collections.defaultdict(list)
            for entry in batch:
                by_day[entry[5][:10]].append(entry)
            written = 0
            days = sorted(by_day)
            for index, day in enumerate(days):
                try:
                    written += self._write(day, by_day[day])
                except Exception as exc:  # the store is down: the rest waits for the next flush
                    kept = [entry for d in days[index:] for entry in by_day[d]]
                    rows = sum(len(entry[0]) for entry in kept)
                    log.warning(
                        "prediction log: flush failed, %d row(s) kept for the next one: %s", rows, exc
                    )
                    self.metrics.log_rows.labels("retried").inc(rows)
                    with self._lock:
                        self._pending.extendleft(reversed(kept))
                        self._rows += rows
                    break
            self.metrics.log_rows.labels("written").inc(written)
            return written

    def _write(self, day: str, entries: list[tuple[Any, Any, str, str, str, str]]) -> int:
        import numpy as np
        import pandas as pd

        from pipelines.storage import atomic_write_parquet

        # one frame from all the records at once (per-request frames would cost a concat)
        rows = pd.DataFrame([record for entry in entries for record in entry[0]])
        numeric = [c for c in rows.columns if c in schema.NUMERIC_FEATURES]
        rows[numeric] = rows[numeric].astype("float64")  # a column of nulls stays a number column
        rows.columns = [f"f_{c}" for c in rows.columns]
        counts = [len(entry[0]) for entry in entries]
        rows["prediction"] = np.concatenate([np.asarray(entry[1], dtype="float64") for entry in entries])
        for index, column in ((2, "model_version"), (3, "role"), (4, "request_id"), (5, "served_at")):
            rows[column] = np.repeat(np.array([entry[index] for entry in entries], dtype=object), counts)
        rows["batch_date"] = day
        self._seq += 1
        name = f"{dt.datetime.now(dt.UTC):%H%M%S}-{self._stem}-{self._seq:06d}.parquet"
        out = self.layout.served_dir(dt.date.fromisoformat(day)) / name
        staged = out.with_name(f".{name}.staged")
        atomic_write_parquet(staged, rows)
        try:  # the local file appears only once the store has it
            if self.store is not None:
                self.store.put_file(f"predictions/served/{day}/{name}", staged)
            os.replace(staged, out)
        finally:
            staged.unlink(missing_ok=True)
        return len(rows)
