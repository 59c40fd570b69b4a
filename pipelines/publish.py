"""Publishing: what a step produced, copied to the shared store (``MLOPS_STORE_URI``).

On the embedded default there is no store and these are no-ops. With one (S3 in the
scaled-out profile) the keys are::

    validated/<day>.parquet              a batch that passed validation
    reports/validation/<day>.json        its validation summary
    quarantine/<day>/...                 a rejected batch, its report.json and GX data docs
    predictions/<day>.parquet            the prediction log of a scored day
    predictions/served/<day>/<file>      the serving API's prediction log (pipelines/serving.py)
    reports/monitor/<day>/...            drift report (HTML) and summary.json
    reports/gate/<run id>/...            gate report (JSON + Markdown), train and window summaries

A set of files is published all or nothing: if one PUT fails (after the store's retries)
the ones already written by the call are deleted again, and the step fails with the
store's one-line error. Steps publish *before* they make their local result visible, so a
failed publish leaves the previous state everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines.config import Settings
from pipelines.storage import atomic_write_bytes

log = logging.getLogger(__name__)


def publish_files(settings: Settings, items: list[tuple[str, Path]]) -> list[str]:
    """PUT each (key, local file); all or nothing. Returns the URLs written."""
    store = settings.store()
    if store is None or not items:
        return []
    written: list[str] = []
    try:
        for key, path in items:
            store.put_file(key, path)
            written.append(key)
    except BaseException:
        store.delete_quietly(written)
        raise
    log.info("published %d object(s) to %s", len(written), store.uri)
    return [store.url(k) for k in written]


def publish_tree(settings: Settings, prefix: str, folder: Path) -> list[str]:
    """PUT every file under ``folder`` at ``prefix/...``; all or nothing."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return publish_files(settings, [(f"{prefix}/{p.relative_to(folder).as_posix()}", p) for p in files])


def fetch_missing(settings: Settings, key: str, path: Path) -> bool:
    """Download ``key`` to ``path`` when the file is not here (a step on another host);
    True when the file is (now) present."""
    if path.exists():
        return True
    store = settings.store()
    if store is None:
        return False
    try:
        data = store.get_bytes(key)
    except FileNotFoundError:
        return False
    atomic_write_bytes(path, data)
    log.info("fetched %s from %s", key, store.uri)
    return True
