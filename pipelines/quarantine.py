"""Quarantine: where a batch that cannot be trusted goes, with the reason beside it.

A quarantined batch never reaches ``data/validated`` (and so never reaches training). Its
folder holds the batch as received, ``report.json`` (what failed, counts, examples) and,
when validation ran, the Great Expectations data docs under ``docs/``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from pipelines.layout import Layout
from pipelines.storage import atomic_copy, atomic_write_text


def quarantine_batch(
    layout: Layout,
    day: dt.date,
    batch_file: Path | None,
    stage: str,
    failures: list[str],
    details: dict[str, Any] | None = None,
) -> Path:
    """Move ``batch_file`` into the day's quarantine folder with a report; returns the folder.

    A previous quarantine of the same day is replaced: the folder always explains the
    latest rejected drop.
    """
    folder = layout.quarantine_dir(day)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    kept = received = None
    if batch_file is not None and batch_file.exists():
        kept = folder / f"batch{''.join(batch_file.suffixes) or '.bin'}"
        atomic_copy(batch_file, kept)
        if batch_file.is_relative_to(layout.incoming):
            batch_file.unlink()
    # the drop as it was received (a landing-zone CSV or Parquet), next to the parsed batch
    for original in sorted(layout.incoming.glob(f"{day.isoformat()}.received*")):
        received = folder / f"received{original.suffix}"
        atomic_copy(original, received)
        original.unlink()
    report = {
        "batch_date": day.isoformat(),
        "stage": stage,
        "quarantined_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "batch_file": kept.name if kept else None,
        "received_file": received.name if received else None,
        "failures": failures,
        **(details or {}),
    }
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2, default=str))
    return folder


def rejection_line(day: dt.date, stage: str, failures: list[str], folder: Path) -> str:
    """The one line printed on stderr for a rejected batch."""
    shown = "; ".join(failures[:6]) + (f"; +{len(failures) - 6} more" if len(failures) > 6 else "")
    return f"batch {day} failed {stage} ({len(failures)} problem(s)): {shown} -> quarantined in {folder}"
