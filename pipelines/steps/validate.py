"""validate: check each incoming batch against the data contract (:mod:`pipelines.contract`),
run by Great Expectations.

For each day: the schema first (alone: nothing else runs on a batch without the contract's
columns), then the suite (:mod:`pipelines.expectations`) on the batch and its derived rule
columns, with bounds learned from the statistics of the validated days before it. A passing
batch moves into the DVC-tracked ``data/validated`` store (``dvc add`` records the new data
version) with its statistics kept in ``reports/validation/<day>.json`` for the next days'
history; a failing one moves to quarantine with its report and GX data docs, and the step
fails with one line per batch naming each broken rule, its column, counts and examples.
Nothing of a failing batch reaches ``data/validated``.

The suite, its context and validation definition are built once per process
(:class:`Validator`): a range of days costs one GX set-up, not one per day.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import contract, faults
from pipelines.config import Params, Settings
from pipelines.errors import BatchRejected, StepError
from pipelines.layout import Layout
from pipelines.locks import HeldLock, workspace_lock
from pipelines.publish import fetch_missing, publish_files, publish_tree
from pipelines.quarantine import quarantine_batch, rejection_line
from pipelines.storage import StorageError, atomic_copy, atomic_write_text, clean_stale_temp
from pipelines.versioning import dvc_push, dvc_remote, is_dvc_repo, run_dvc

log = logging.getLogger(__name__)


@dataclass
class ValidateResult:
    passed: dict[str, int] = field(default_factory=dict)  # day -> rows
    rejected: dict[str, str] = field(default_factory=dict)  # day -> reason line
    already: list[str] = field(default_factory=list)
    data_version: str | None = None


@dataclass
class Checked:
    """What the contract found in one day's batch."""

    day: dt.date
    rows: int
    failures: list[tuple[str, str]]  # (rule id, one line)
    gx: dict[str, Any] | None  # GX's result (None when the schema stage stopped)
    statistics: dict[str, Any] | None
    bounds: contract.Bounds | None = None
    block: str | None = None  # first..last day: checked with those days (one result, one page)

    @property
    def rules(self) -> set[str]:
        return {rule for rule, _ in self.failures}

    @property
    def lines(self) -> list[str]:
        return [line for _, line in self.failures]


@dataclass
class RowsChecked:
    """Days whose rows keep every row rule, checked together in one GX run (a block of a
    range): their batches and derived frames, kept for the per-batch rules, and the run."""

    label: str  # first..last day of the block
    rows: int
    result: dict[str, Any]  # the block's run: its row rules, and its tolerances if clear
    batches: dict[dt.date, Any] = field(default_factory=dict)
    derived: dict[dt.date, Any] = field(default_factory=dict)
    # no row of the block broke a tolerance (``mostly``): no day can, and the days' own runs
    # leave the tolerances out (their results are the block's)
    tolerances_clear: bool = False

    def merged(self, batch_result: dict[str, Any], days: str | None = None) -> dict[str, Any]:
        """One day's result: its per-batch rules (its own run) and the row rules (the block's
        run, which every row of the day passed), as one GX validation result; or, with
        ``days`` (first..last), the result of those days: the per-batch rules of each (one
        run on a frame of one row per day) and the row rules of the block."""
        from pipelines.expectations import SUITE_NAME

        results = [*self.result["results"], *batch_result["results"]]
        statistics = {
            **batch_result.get("statistics", {}),
            "evaluated_expectations": len(results),
            "successful_expectations": len(results),
            "unsuccessful_expectations": 0,
            "success_percent": 100.0,
        }
        # the run name is what GX's page shows of it (the row rules' percentages are the
        # block's: 0% unexpected, as for the day)
        note = f"row rules checked on the rows of {self.label} together ({self.rows} rows, one run)"
        if self.tolerances_clear:
            note += "; the weather tolerance too (no row of them outside it)"
        if days is not None:
            note += (
                f"; the per-batch rules of {days} in one run on a frame of one row per day, "
                "each day against the bounds learned from the validated days before it"
            )
        meta = {**batch_result.get("meta", {}), "row_rules": note}
        meta["run_id"] = {**(meta.get("run_id") or {}), "run_name": note}
        return {
            **batch_result,
            "suite_name": SUITE_NAME,
            "results": results,
            "statistics": statistics,
            "meta": meta,
        }


class Validator:
    """The contract's suite, built once, run on any number of days."""

    def __init__(self, validate_params: dict[str, Any], late_threshold_min: float) -> None:
        self.cfg = validate_params
        self.late_threshold = late_threshold_min
        self._definitions: dict[str, Any] = {}

    def _validation(self, part: str) -> Any:
        if part not in self._definitions:
            self._definitions[part] = self._build(part=part)
        return self._definitions[part]

    def _build(self, docs_dir: Path | None = None, schema_only: bool = False, part: str = "all") -> Any:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        from pipelines.expectations import build_days_suite, build_schema_suite, build_suite

        # in memory, and no temporary data docs site (GX's default leaves a folder in /tmp per context)
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
        )
        ctx = gx.get_context(mode="ephemeral", project_config=config)
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        definition = (
            ctx.data_sources.add_pandas("flights")
            .add_dataframe_asset("batch")
            .add_batch_definition_whole_dataframe("whole")
        )
        if schema_only:
            suite = build_schema_suite()
        elif part in ("days", "days_learned"):
            suite = build_days_suite(tolerances=part == "days")
        else:
            suite = build_suite(self.cfg, part)
        suite = ctx.suites.add(suite)
        validation = ctx.validation_definitions.add(
            gx.ValidationDefinition(data=definition, suite=suite, name="batch")
        )
        if docs_dir is None:
            return validation
        ctx.add_data_docs_site(site_name="batch", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })  # fmt: skip
        return ctx.checkpoints.add(gx.Checkpoint(
            name="batch", validation_definitions=[validation], result_format={"result_format": "SUMMARY"},
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["batch"])],
        ))  # fmt: skip

    def prepare(
        self, batch: Any, day: dt.date, history: list[dict[str, Any]], derived: Any = None
    ) -> tuple[Any, contract.Bounds] | list[str]:
        """The frame the suite runs on, and its bounds; or the schema failures."""
        problems = contract.schema_failures(batch)
        if problems:
            return problems
        limits = contract.bounds(batch, history, self.cfg)
        if derived is None:
            derived = contract.derive(batch, day, self.late_threshold)
        return contract.with_statistics(derived, limits).copy(), limits  # consolidated: see check_rows

    def check_rows(self, block: list[tuple[dt.date, Any]]) -> RowsChecked | None:
        """The row rules on the rows of several days (each checked against the schema and
        derived with its own day) in one GX run. None if a row breaks one: the days are then
        checked one by one, for the same reports as a daily run."""
        import pandas as pd

        from pipelines.expectations import TOLERANCE_RULES

        derived = {day: contract.derive(batch, day, self.late_threshold) for day, batch in block}
        # one block per dtype: GX copies and masks the frame per metric, and a frame of many
        # blocks (a day's columns and its derived ones, concatenated) is consolidated anew
        # by every copy (a third of a year's validation, measured)
        frame = pd.concat(list(derived.values()), ignore_index=True).copy()
        run = self._validation("block").run(
            batch_parameters={"dataframe": frame}, result_format=_RESULT_FORMAT
        )
        if not run.success:  # a row rule broke (or a tolerance, over the whole block)
            return None
        result = run.to_json_dict()
        tolerance = [_rule(item) in TOLERANCE_RULES for item in run.results]
        clear = not any(
            item.result.get("unexpected_count") for item, t in zip(run.results, tolerance, strict=True) if t
        )
        if not clear:  # some row was outside a tolerance: each day judges it in its own run
            result["results"] = [item for item, t in zip(result["results"], tolerance, strict=True) if not t]
        label = f"{block[0][0]}..{block[-1][0]}"
        return RowsChecked(label, len(frame), result, dict(block), derived, tolerances_clear=clear)

    def check_days(self, rows: RowsChecked, history: list[dict[str, Any]]) -> dict[dt.date, Checked]:
        """The per-batch rules of a block's days (whose rows passed together) in one GX run on
        a frame of one row per day: each day judged against the bounds learned from the
        history as it stands before it, the days before it in the block included (as daily
        runs would learn them). Returns the days so checked, all passing: the block's days up
        to the first that breaks a per-batch rule (or sits on a bound within float rounding);
        that day and the ones after it take their own runs, so a rejection reads as in a
        nightly run and the history after it is learned without it."""
        import pandas as pd

        from pipelines.expectations import day_verdicts

        tolerances = not rows.tolerances_clear  # not cleared by the block's run: judged per day
        history = list(history)
        verdicts, kept = [], []
        for day in sorted(rows.derived):
            batch, derived = rows.batches[day], rows.derived[day]
            limits = contract.bounds(batch, history, self.cfg)
            verdict, clear = day_verdicts(derived, limits, tolerances)
            if not (clear and all(verdict.values())):
                break
            statistics = contract.statistics(batch, self.late_threshold)
            verdicts.append(verdict)
            kept.append((day, len(batch), statistics, limits))
            history = [*history, statistics][-int(self.cfg["history_days"]) :]
        if not kept:
            return {}
        frame = pd.DataFrame(verdicts, index=[str(day) for day, *_ in kept])
        run = self._validation("days" if tolerances else "days_learned").run(
            batch_parameters={"dataframe": frame}, result_format=_RESULT_FORMAT
        )
        if not run.success:  # GX disagrees with the verdicts: let every day run on its own
            log.warning("validate %s: the days' per-batch run disagreed; each day runs alone", rows.label)
            return {}
        label = f"{kept[0][0]}..{kept[-1][0]}"
        result = rows.merged(run.to_json_dict(), days=label)
        for day, *_ in kept:
            del rows.derived[day], rows.batches[day]
        return {
            day: Checked(day, n, [], result, statistics, limits, block=label)
            for day, n, statistics, limits in kept
        }

    def check(
        self, batch: Any, day: dt.date, history: list[dict[str, Any]], rows: RowsChecked | None = None
    ) -> Checked:
        if rows is not None and day in rows.derived:
            # the row rules held for the whole block: only the per-batch rules are left
            prepared = self.prepare(batch, day, history, derived=rows.derived.pop(day))
            assert not isinstance(prepared, list), "the block's batches passed the schema stage"
            frame, limits = prepared
            run = self._validation("learned" if rows.tolerances_clear else "batch").run(
                batch_parameters={"dataframe": frame},
                expectation_parameters=limits.parameters(),
                result_format=_RESULT_FORMAT,
            )
            if run.success:
                kept = contract.statistics(batch, self.late_threshold)
                return Checked(day, len(batch), [], rows.merged(run.to_json_dict()), kept, limits)
            # a per-batch rule broke: the whole suite on the day, as a daily run reports it
        prepared = self.prepare(batch, day, history)
        if isinstance(prepared, list):
            return Checked(
                day,
                len(batch),
                [(line.split(":", 1)[0], _schema_line(line)) for line in prepared],
                None,
                None,
            )
        frame, limits = prepared
        run = self._validation("all").run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=limits.parameters(),
            result_format=_RESULT_FORMAT,
        )
        failures = describe_failures(run.results, frame, limits)
        statistics = None if failures else contract.statistics(batch, self.late_threshold)
        return Checked(day, len(batch), failures, run.to_json_dict(), statistics, limits)

    def data_docs(self, batch: Any, day: dt.date, history: list[dict[str, Any]], folder: Path) -> None:
        """GX's data docs of this batch's validation, for a person to read (rejected batches):
        the schema suite when the schema stage stopped, else the whole suite."""
        prepared = self.prepare(batch, day, history)
        if isinstance(prepared, list):
            self._build(docs_dir=folder, schema_only=True).run(batch_parameters={"dataframe": batch})
            return
        frame, limits = prepared
        self._build(docs_dir=folder).run(
            batch_parameters={"dataframe": frame}, expectation_parameters=limits.parameters()
        )


_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}


def _schema_line(line: str) -> str:
    rule_id, _, detail = line.partition(":")
    return f"{rule_id} ({contract.BY_ID[rule_id].title}):{detail}"


def describe_failures(results: Any, frame: Any, limits: contract.Bounds) -> list[tuple[str, str]]:
    """One line per broken rule, in the contract's order: its id and title, then per failed
    expectation the column, counts and examples (for a derived rule: the source values)."""
    by_rule: dict[str, list[str]] = {}
    for result in results:
        if result.success:
            continue
        rule = _rule(result)
        by_rule.setdefault(rule, []).append(_detail(rule, result, frame, limits))
    order = [r.id for r in contract.RULES]
    return [(rule, f"{rule} ({contract.BY_ID[rule].title}): {'; '.join(details)}")
            for rule, details in sorted(by_rule.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)]  # fmt: skip


def _rule(result: Any) -> str:
    """The contract rule a GX expectation result checks (its ``meta.rule``)."""
    return (result.expectation_config.meta or {}).get("rule", "unknown")


def _detail(rule: str, result: Any, frame: Any, limits: contract.Bounds) -> str:
    config = result.expectation_config
    kwargs, res = config.kwargs, result.result or {}
    column = kwargs.get("column")
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message", "")).splitlines()[0][:120]
        return f"{column or 'table'}: could not be evaluated ({message})"
    learned = f" (learned from {limits.history_days} validated days)" if limits.learned else " (fixed bounds)"
    if config.type == "expect_table_row_count_to_be_between":
        return f"{res.get('observed_value')} rows, expected {limits.rows_min:.0f}..{limits.rows_max:.0f}{learned}"
    if config.type == "expect_column_proportion_of_non_null_values_to_be_between":
        missing = 1 - float(res.get("observed_value") or 0)
        return f"{column}: {missing:.1%} missing, at most {limits.null_share_max[column]:.1%}{learned}"
    if config.type == "expect_column_mean_to_be_between":
        return f"late rate {float(res.get('observed_value') or 0):.1%}, at most {limits.late_rate_max:.1%}{learned}"
    if column and column.startswith(contract.STAT_PREFIX):
        name = column.removeprefix(contract.STAT_PREFIX)
        return (f"{contract.MIX_COLUMNS[name]} shares moved by up to {limits.mix_shift[name]:.2f}, at most "
                f"{limits.mix_max:.2f}{learned}")  # fmt: skip
    count, total = res.get("unexpected_count"), res.get("element_count")
    if column and column.startswith(contract.RULE_PREFIX) and column.count(":") == 2:  # rule:<id>:<column>
        source = column.rsplit(":", 1)[1]
        values = frame.loc[~frame[column].astype(bool), source].head(3).tolist()
        return f"{source}: {count} unexpected of {total}, e.g. {[_plain(v) for v in values]}"
    if column and column.startswith(contract.RULE_PREFIX):
        sources = [c for c in contract.BY_ID[rule].columns if c in frame.columns]
        bad = frame.index[~frame[column].astype(bool)][:3]
        examples = ["(" + ", ".join(f"{c}={_plain(frame.at[i, c])}" for c in sources) + ")" for i in bad]
        return f"{count} of {total} rows, e.g. {' '.join(examples)}"
    target = column or ",".join(kwargs.get("column_list") or []) or "table"
    examples = res.get("partial_unexpected_list") or []
    shown = f", e.g. {[_plain(v) for v in examples[:3]]}" if examples else ""
    return f"{target}: {count} unexpected of {total}{shown}"


def _plain(value: Any) -> Any:
    """A value as a person reads it in a message: 1275 not 1275.0, None not nan."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if value != value:
            return None
        if value.is_integer():
            return int(value)
    return value


def load_history(settings: Settings, layout: Layout, before: dt.date, days: int) -> list[dict[str, Any]]:
    """The statistics of the last ``days`` validated days before ``before`` (oldest first),
    from their validation reports (fetched from the store when this host lacks one; computed
    from the batch for a report written before statistics were kept)."""
    import pandas as pd

    history = []
    for day in [d for d in layout.validated_days() if d < before][-days:]:
        report = layout.reports / "validation" / f"{day}.json"
        fetch_missing(settings, f"reports/validation/{day}.json", report)
        statistics = json.loads(report.read_text()).get("statistics") if report.exists() else None
        if statistics is None:
            statistics = contract.statistics(pd.read_parquet(layout.validated_batch(day)), 15)
        history.append(statistics)
    return history


def validate(settings: Settings, params: Params, days: list[dt.date]) -> ValidateResult:
    """Validate ``data/incoming/<day>.parquet`` for each day; see the module docstring."""
    import pandas as pd

    layout = Layout.of(settings, params.get("validate.store"))
    cfg = params.section("validate")
    validator = Validator(cfg, params.get("data.late_threshold_min"))
    result = ValidateResult()
    accepted: list[tuple[dt.date, Path, dict[str, Any]]] = []
    history: list[dict[str, Any]] | None = None
    docs_for: dict[str, dict[str, Any]] = {}  # page name (a day, or first..last) -> GX result
    # a range in blocks: the row rules (and the tolerances) of a block's days in one GX run,
    # then their per-batch rules in one run on a frame of one row per day (a block with a
    # broken row, and a day that breaks a per-batch rule, take the daily path)
    block_days = max(1, int(cfg.get("block_days", 31)))
    ordered = sorted(days)
    for first in range(0, len(ordered), block_days):
        block = ordered[first : first + block_days]
        rows = _check_rows(validator, layout, block) if len(block) > 1 else None
        together: dict[dt.date, Checked] | None = None  # the block's days checked in one run
        for day in block:
            incoming = layout.incoming_batch(day)
            if not incoming.exists():
                if layout.validated_batch(day).exists():
                    result.already.append(day.isoformat())
                    continue
                raise StepError(_nothing_to_validate(layout, day, incoming))
            if history is None or (accepted and accepted[-1][0] > day):
                history = load_history(settings, layout, day, int(cfg["history_days"]))
            if rows is not None and together is None:
                together = validator.check_days(rows, history)
            if together and day in together:
                checked = together[day]
            else:
                together = None  # the block's days after this one: judged together again
                try:
                    batch = (
                        rows.batches.pop(day) if rows and day in rows.batches else pd.read_parquet(incoming)
                    )
                except Exception as exc:
                    reason = f"unreadable batch file: {type(exc).__name__}: {exc}"
                    _reject(settings, layout, result, day, incoming, ["columns: " + reason], {})
                    continue
                checked = validator.check(batch, day, history, rows)
            if checked.failures:
                details = {
                    "rows": len(batch),
                    "rules": sorted(checked.rules),
                    "great_expectations": checked.gx,
                }
                folder = _reject(settings, layout, result, day, incoming, checked.lines, details,
                                 docs=lambda folder, b=batch, d=day, h=list(history): validator.data_docs(b, d, h, folder / "docs"))  # fmt: skip
                log.error("%s", result.rejected[day.isoformat()])
                del folder
                continue
            report = {"batch_date": day.isoformat(), "rows": checked.rows, "success": True,
                      "expectations": len(checked.gx.get("results", [])) if checked.gx else 0,
                      "bounds": _bounds_summary(checked.bounds), "statistics": checked.statistics}  # fmt: skip
            accepted.append((day, incoming, report))
            # rendered after the commit: a page per day checked alone, one per days checked together
            if cfg.get("data_docs", True) and checked.gx:
                docs_for.setdefault(checked.block or day.isoformat(), checked.gx)
            assert checked.statistics is not None
            history = [*history, checked.statistics][-int(cfg["history_days"]) :]
            result.passed[day.isoformat()] = checked.rows
            log.info(
                "validate %s: %d rows kept every rule (%d expectations%s)",
                day,
                checked.rows,
                report["expectations"],
                f", with the days {checked.block}" if checked.block else "",
            )

    faults.point("validate.checked")
    if accepted:
        with workspace_lock(settings.home_dir) as held:
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
    for name, gx_result in docs_for.items():
        if name.split("..")[0] in result.passed:  # not committed meanwhile by another run
            _passed_docs(settings, layout, name, gx_result)
    if result.rejected:
        raise BatchRejected(" | ".join(result.rejected.values()))
    return result


def _check_rows(validator: Validator, layout: Layout, block: list[dt.date]) -> RowsChecked | None:
    """The row rules of a block of days in one run, for the days whose batch is there,
    readable and of the contract's shape (the others take the daily path, which says why)."""
    import pandas as pd

    ready = []
    for day in block:
        incoming = layout.incoming_batch(day)
        if not incoming.exists():
            continue
        try:
            batch = pd.read_parquet(incoming)
        except Exception:
            continue
        if not contract.schema_failures(batch):
            ready.append((day, batch))
    return validator.check_rows(ready) if len(ready) > 1 else None


@functools.cache
def _page_tools() -> tuple[Any, Any, Any]:
    """GX's result schema, page renderer and Jinja view, made once per process: the view's
    Jinja environment compiles the page templates on first use (a third of a page's cost)."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    return ExpectationSuiteValidationResultSchema(), ValidationResultsPageRenderer(), DefaultJinjaPageView()


def _passed_docs(settings: Settings, layout: Layout, name: str, gx_result: dict[str, Any]) -> None:
    """GX Data Docs of committed batches (``validate.data_docs``): GX's validation results
    page, rendered from the result the check already has (0.1 s; a checkpoint re-validating
    to build a docs site takes 1.4 s), written whole beside the reports as ``<name>.html``
    (a day, or first..last for days checked together), then published. The batches are
    committed already: a page that cannot be written is a warning."""
    page = layout.reports / "validation" / "docs" / f"{name}.html"
    try:
        schema, renderer, view = _page_tools()
        loaded = schema.load(json.loads(json.dumps(gx_result, default=str)))
        html = view.render(renderer.render(loaded))
        atomic_write_text(page, html)
        publish_files(settings, [(f"reports/validation/docs/{name}.html", page)])
    except Exception as exc:
        log.warning("validate %s: data docs not rendered or published: %s", name, exc)
        return
    log.info("validate %s: GX Data Docs: %s", name, page.resolve().as_uri())


def _nothing_to_validate(layout: Layout, day: dt.date, incoming: Path) -> str:
    """Why there is no batch: quarantined at ingest (say so and where), or never landed."""
    report = layout.quarantine_dir(day) / "report.json"
    if report.exists():
        found = json.loads(report.read_text())
        if found.get("stage") == "ingest":
            reasons = "; ".join(found.get("failures", []))[:300]
            return (f"batch {day} was quarantined at ingest ({reasons}) in {report.parent}: fix the drop, then run "
                    f"`mlops ingest --date {day}` again")  # fmt: skip
    return f"batch {day}: nothing to validate in {incoming} (run `mlops ingest --date {day}` first)"


def _bounds_summary(limits: contract.Bounds | None) -> dict[str, Any] | None:
    if limits is None:
        return None
    return {"history_days": limits.history_days, "learned": limits.learned, "rows": [round(limits.rows_min), round(limits.rows_max)],
            "late_rate_max": round(limits.late_rate_max, 4), "mix_shift": limits.mix_shift, "mix_max": limits.mix_max}  # fmt: skip


def _reject(
    settings: Settings,
    layout: Layout,
    result: ValidateResult,
    day: dt.date,
    incoming: Path,
    failures: list[str],
    details: dict[str, Any],
    docs: Any = None,
) -> Path:
    """Quarantine the batch (as received and as parsed) with its report and data docs, then
    publish the folder. A store that fails then is reported with the rejection, not instead of it."""
    folder = quarantine_batch(layout, day, incoming, "validate", failures, details)
    if docs is not None:
        try:  # data docs (HTML) for a person to read
            docs(folder)
            log.info(
                "validate %s: GX Data Docs: %s", day, (folder / "docs" / "index.html").resolve().as_uri()
            )
        except Exception as exc:  # the rejection stands without its HTML
            log.warning("validate %s: data docs not rendered: %s", day, exc)
    line = rejection_line(day, "validation", failures, folder)
    try:
        publish_tree(settings, f"quarantine/{day}", folder)
    except StorageError as exc:
        line += f"; and publishing the quarantine failed: {exc}"
    result.rejected[day.isoformat()] = line
    return folder


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
    the batch files and the ``.dvc`` record are put back as they were, the staged reports are
    removed and the incoming batches stay where they are, so the retried step starts over;
    what DVC had already uploaded is content-addressed and referenced by no version. A
    process killed on the way (SIGKILL: no clean-up runs) leaves only validated files in the
    store and the incoming batch in place, and the next validate of the day finishes the commit.
    """
    tracked = layout.validated.with_suffix(".dvc")
    previous = tracked.read_text() if tracked.exists() else None
    copied: list[Path] = []
    staged = layout.reports / "validation" / ".staged"
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
        for day, _, _ in accepted:
            (staged / f"{day}.json").unlink(missing_ok=True)
        if previous is None:
            tracked.unlink(missing_ok=True)
        elif tracked.exists() and tracked.read_text() != previous:
            atomic_write_text(tracked, previous)
        log.error("validate: nothing committed; data/validated and its data version are as before")
        raise
    for day, incoming, _ in accepted:
        os.replace(staged / f"{day}.json", layout.reports / "validation" / f"{day}.json")
        incoming.unlink()
        for received in layout.incoming.glob(f"{day}.received*"):
            received.unlink()
        faults.point("validate.done-day")
    return version
