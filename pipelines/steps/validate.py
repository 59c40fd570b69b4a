"""validate: check each incoming batch against the expectation suite (Great Expectations).

A passing batch moves into the DVC-tracked ``data/validated`` store (and ``dvc add``
records the new data version); a failing one moves to quarantine with its GX report (JSON
and data docs HTML) and the step fails with one line naming the batch, the failed
expectations and their counts. Nothing of a failing batch reaches ``data/validated``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import faults
from pipelines.config import Params, Settings
from pipelines.errors import BatchRejected, StepError
from pipelines.expectations import build_suite
from pipelines.layout import Layout
from pipelines.locks import HeldLock, workspace_lock
from pipelines.publish import publish_files, publish_tree
from pipelines.quarantine import quarantine_batch, rejection_line
from pipelines.storage import atomic_copy, atomic_write_text, clean_stale_temp
from pipelines.versioning import dvc_push, dvc_remote, is_dvc_repo, run_dvc

log = logging.getLogger(__name__)


@dataclass
class ValidateResult:
    passed: dict[str, int] = field(default_factory=dict)  # day -> rows
    rejected: dict[str, str] = field(default_factory=dict)  # day -> reason line
    already: list[str] = field(default_factory=list)
    data_version: str | None = None


def validate(settings: Settings, params: Params, days: list[dt.date]) -> ValidateResult:
    """Validate ``data/incoming/<day>.parquet`` for each day; see the module docstring."""
    import pandas as pd

    layout = Layout.of(settings, params.get("validate.store"))
    cfg = params.section("validate")
    result = ValidateResult()
    accepted: list[tuple[dt.date, Path, dict[str, Any]]] = []
    for day in days:
        incoming = layout.incoming_batch(day)
        if not incoming.exists():
            if layout.validated_batch(day).exists():
                result.already.append(day.isoformat())
                continue
            raise StepError(f"batch {day}: nothing to validate in {incoming} (run `mlops ingest` first)")
        try:
            batch = pd.read_parquet(incoming)
        except Exception as exc:
            reason = f"unreadable batch file: {type(exc).__name__}: {exc}"
            folder = quarantine_batch(layout, day, incoming, "validate", [reason])
            result.rejected[day.isoformat()] = rejection_line(day, "validation", [reason], folder)
            publish_tree(settings, f"quarantine/{day}", folder)
            continue
        failures, gx_json = run_suite(batch, day, cfg, docs_dir=None)
        if failures:
            folder = quarantine_batch(
                layout,
                day,
                incoming,
                "validate",
                failures,
                {"rows": len(batch), "great_expectations": gx_json},
            )
            # data docs (HTML) for a person to read: rebuilt only for rejected batches
            run_suite(batch, day, cfg, docs_dir=folder / "docs")
            publish_tree(settings, f"quarantine/{day}", folder)
            result.rejected[day.isoformat()] = rejection_line(day, "validation", failures, folder)
            log.error("%s", result.rejected[day.isoformat()])
            continue
        report = {"batch_date": day.isoformat(), "rows": len(batch), "success": True,
                  "expectations": len(gx_json.get("results", []))}  # fmt: skip
        accepted.append((day, incoming, report))
        result.passed[day.isoformat()] = len(batch)
        log.info("validate %s: %d rows passed %d expectations", day, len(batch), report["expectations"])

    faults.point("validate.checked")
    if accepted:
        with workspace_lock(settings.root) as held:
            faults.point("validate.locked")
            # what a killed run left: temporary files, never inside the tracked folder
            clean_stale_temp(layout.staging, layout.validated)
            # the same day validated meanwhile by another run (a scheduled and a manual
            # nightly, say): the first commit consumed the incoming file; nothing to redo
            pending = []
            for day, incoming, report in accepted:
                if incoming.exists():
                    pending.append((day, incoming, report))
                elif layout.validated_batch(day).exists():
                    log.info("validate %s: committed meanwhile by another run", day)
                    result.passed.pop(day.isoformat(), None)
                    result.already.append(day.isoformat())
                else:
                    raise StepError(f"batch {day}: {incoming} disappeared while it was being validated")
            if pending:
                result.data_version = _commit(settings, layout, pending, held)
            elif layout.validated.with_suffix(".dvc").exists():
                result.data_version = _recorded_version(layout.validated.with_suffix(".dvc"))
    elif layout.validated.with_suffix(".dvc").exists():
        result.data_version = _recorded_version(layout.validated.with_suffix(".dvc"))
    if result.rejected:
        raise BatchRejected(" | ".join(result.rejected.values()))
    return result


def _recorded_version(tracked: Path) -> str:
    """The hash `dvc add` recorded (no need to hash the store again)."""
    import yaml

    return str(yaml.safe_load(tracked.read_text())["outs"][0]["md5"])


def _commit(
    settings: Settings, layout: Layout, accepted: list[tuple[dt.date, Path, dict[str, Any]]], held: HeldLock
) -> str | None:
    """Make the passing batches part of the validated data, all or nothing.

    In order: copy into ``data/validated``, ``dvc add`` (new data version), ``dvc push`` to the
    remote (if any), publish batches and reports to the store (if any). If any of it fails,
    the batch files and the ``.dvc`` record are put back as they were and the incoming
    batches stay where they are, so the retried step starts over; what DVC had already
    uploaded is content-addressed and referenced by no version. A process killed on the way
    (SIGKILL: no clean-up runs) leaves only validated files in the store and the incoming
    batch in place, and the next validate of the day finishes the commit.
    """
    tracked = layout.validated.with_suffix(".dvc")
    previous = tracked.read_text() if tracked.exists() else None
    copied: list[Path] = []
    try:
        for day, incoming, _ in accepted:
            target = layout.validated_batch(day)
            atomic_copy(incoming, target, staging=layout.staging)
            copied.append(target)
            faults.point("validate.copied")
        version = None
        if is_dvc_repo(settings.root):
            run_dvc(
                settings.root, "add", "--quiet", str(layout.validated.relative_to(settings.root)), held=held
            )
            faults.point("validate.dvc-added")
            version = _recorded_version(tracked)
            remote = dvc_remote(settings.root, settings.dvc_remote, held=held)
            if remote:
                dvc_push(settings.root, remote, str(tracked.relative_to(settings.root)), held=held)
                faults.point("validate.pushed")
        staged = layout.reports / "validation" / ".staged"
        staged.mkdir(parents=True, exist_ok=True)
        items: list[tuple[str, Path]] = []
        for day, _, report in accepted:
            atomic_write_text(
                staged / f"{day}.json", json.dumps({**report, "data_version": version}, indent=2)
            )
            items += [(f"validated/{day}.parquet", layout.validated_batch(day)),
                      (f"reports/validation/{day}.json", staged / f"{day}.json")]  # fmt: skip
        publish_files(settings, items)
        faults.point("validate.published")
    except BaseException:
        for path in copied:
            path.unlink(missing_ok=True)
        if previous is None:
            tracked.unlink(missing_ok=True)
        elif tracked.exists() and tracked.read_text() != previous:
            atomic_write_text(tracked, previous)
        log.error("validate: nothing committed; data/validated and its data version are as before")
        raise
    for day, incoming, _ in accepted:
        os.replace(staged / f"{day}.json", layout.reports / "validation" / f"{day}.json")
        incoming.unlink()
        faults.point("validate.done-day")
    return version


def run_suite(
    batch: Any, day: dt.date, validate_params: dict[str, Any], docs_dir: Path | None
) -> tuple[list[str], dict[str, Any]]:
    """Run the suite on ``batch``; returns (one line per failed expectation, GX result JSON).

    With ``docs_dir`` the GX data docs site for this validation is written there too.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # in memory, and no temporary data docs site (GX's default leaves a folder in /tmp per context)
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    )
    ctx = gx.get_context(mode="ephemeral", project_config=config)
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions: list[Any] = []
    if docs_dir is not None:
        ctx.add_data_docs_site(
            site_name="batch",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["batch"]))
    asset = ctx.data_sources.add_pandas("flights").add_dataframe_asset(f"batch_{day}")
    definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = ctx.suites.add(build_suite(day, validate_params))
    validation = ctx.validation_definitions.add(
        gx.ValidationDefinition(data=definition, suite=suite, name=f"validate_{day}")
    )
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name="batch", validation_definitions=[validation], actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
    )  # fmt: skip
    run = checkpoint.run(batch_parameters={"dataframe": batch})
    (outcome,) = run.run_results.values()
    failures = [describe_failure(r) for r in outcome.results if not r.success]
    return failures, outcome.to_json_dict()


def describe_failure(result: Any) -> str:
    """``expect_x(column): N unexpected of M, e.g. [...]`` for one failed expectation."""
    cfg = result.expectation_config
    kwargs = cfg.kwargs
    target = kwargs.get("column") or ",".join(kwargs.get("column_list") or []) or "table"
    name = f"{cfg.type}({target})"
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message", "")).splitlines()[0][:120]
        return f"{name}: could not be evaluated ({message})"
    res = result.result or {}
    if "unexpected_count" in res and res.get("unexpected_count") is not None:
        examples = res.get("partial_unexpected_list") or []
        shown = f", e.g. {examples[:3]}" if examples else ""
        return f"{name}: {res['unexpected_count']} unexpected of {res.get('element_count')}{shown}"
    observed = res.get("observed_value")
    if cfg.type == "expect_table_columns_to_match_set":
        details = res.get("details", {}).get("mismatched", {})
        missing, extra = details.get("missing", []), details.get("unexpected", [])
        return f"{name}: missing columns {sorted(missing)}, unexpected columns {sorted(extra)}"
    expected = {k: v for k, v in kwargs.items() if k in ("min_value", "max_value", "type_list", "value_set")}
    return f"{name}: observed {observed!r}, expected {expected}"
