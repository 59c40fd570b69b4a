"""The gate's uncertainty: paired bootstrap intervals, the days unseen by both models, and
verdicts that do not flip with the resamples or the holdout.

Models are real (the project's model on January 2013), the gate code is the product's; the
DeLong variance below is an independent check of the bootstrap, written from DeLong et al.
(1988) with Sun & Xu's (2014) mid-rank form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines import schema
from pipelines.features import build_features, build_target
from pipelines.intervals import Resamples, weighted_auc

SEEDS = range(20)


def table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    batch = pd.concat(frames, ignore_index=True)
    out = build_features(batch)
    out[schema.TARGET] = build_target(batch, 15)
    out["batch_date"] = pd.to_datetime(batch[["year", "month", "day"]]).dt.strftime("%Y-%m-%d")
    return out


@pytest.fixture(scope="module")
def models(january_template: Path) -> dict[str, Any]:
    """A champion trained on January 1-10; challengers on 1-20: the same configuration with more
    days, and a crippled one; two holdouts none of them saw (21-25 and 26-31)."""
    from pipelines.config import Settings, load_params
    from pipelines.model import build_model

    params = load_params(Settings(project_dir=january_template))
    frames = {
        p.stem: pd.read_parquet(p) for p in sorted((january_template / "data/validated").glob("*.parquet"))
    }
    train = table([f for day, f in frames.items() if day <= "2013-01-20"])
    X, y = train[list(schema.FEATURES)], train[schema.TARGET]
    early = train["batch_date"] <= "2013-01-10"
    base = params.section("train")
    fitted = {
        "champion": build_model(base).fit(X[early], y[early]),
        "more days": build_model(base).fit(X, y),
        "crippled": build_model({**base, "max_iter": 3, "max_leaf_nodes": 2, "learning_rate": 0.01}).fit(
            X, y
        ),
    }
    holdouts = [
        table([f for day, f in frames.items() if "2013-01-21" <= day <= "2013-01-25"]),
        table([f for day, f in frames.items() if day >= "2013-01-26"]),
    ]
    return {"models": fitted, "holdouts": holdouts, "cfg": params.section("evaluate")}


def proba(model: Any, holdout: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(holdout[list(schema.FEATURES)])[:, 1]


def verdict(models: dict[str, Any], challenger: str, holdout: pd.DataFrame, seed: int) -> str:
    """The product's gate checks for one challenger against the champion, both scored on
    ``holdout`` (unseen by both), with the bootstrap seeded by ``seed``."""
    from pipelines.steps.evaluate import champion_checks, compared_days, holdout_metrics

    cfg = {**models["cfg"], "seed": seed, "slice_columns": []}
    y, p, q = (
        holdout[schema.TARGET],
        proba(models["models"][challenger], holdout),
        proba(models["models"]["champion"], holdout),
    )
    resamples = Resamples(len(holdout), cfg["resamples"], seed, cfg["confidence"])
    champion = {"version": "1", "run_id": "r", "metrics": holdout_metrics(y, q, 0.2)}
    comparison = compared_days(holdout["batch_date"], ("2013-01-01", "2013-01-10"))
    compared = champion_checks(champion, holdout, p, cfg, resamples, q, comparison)
    assert [c.name for c in compared] == ["roc_auc vs champion", "brier vs champion"]
    return "refused" if any(c.verdict == "fail" for c in compared) else "blessed"


def test_a_verdict_does_not_flip_with_the_resamples_or_the_holdout(models: dict[str, Any]) -> None:
    """One challenger against the champion on two different unseen holdouts, 20 bootstrap seeds
    each: the model trained on twice the days is blessed every time, a crippled one refused
    every time; neither verdict depends on the draw."""
    for challenger, expected in (("more days", "blessed"), ("crippled", "refused")):
        seen = [
            verdict(models, challenger, holdout, seed) for holdout in models["holdouts"] for seed in SEEDS
        ]
        assert seen == [expected] * 40, (challenger, seen)


def delong_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """AUC(a) - AUC(b) and its standard error by DeLong's method (mid-rank structural components)."""
    from scipy.stats import rankdata

    late, on_time = y == 1, y == 0
    m, n = late.sum(), on_time.sum()
    diffs, v10, v01 = [], [], []
    for s in (a, b):
        r_all, r_pos, r_neg = rankdata(s), rankdata(s[late]), rankdata(s[on_time])
        v10.append((r_all[late] - r_pos) / n)  # per late flight: share of on-time flights below it
        v01.append(1 - (r_all[on_time] - r_neg) / m)
        diffs.append((r_all[late].sum() - m * (m + 1) / 2) / (m * n))
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    contrast = np.array([1.0, -1.0])
    var = contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n
    return diffs[0] - diffs[1], float(np.sqrt(var))


def test_the_bootstrap_agrees_with_delong(models: dict[str, Any]) -> None:
    """The paired bootstrap's spread of the ROC AUC difference matches DeLong's closed-form
    standard error, and its point estimate is scikit-learn's."""
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    holdout = models["holdouts"][0]
    y = holdout[schema.TARGET].to_numpy(dtype=float)
    for challenger in ("more days", "crippled"):
        p, q = proba(models["models"][challenger], holdout), proba(models["models"]["champion"], holdout)
        interval = Resamples(len(y), 4000, 1, 0.95).auc_difference(y, p, q)
        assert interval.estimate == pytest.approx(roc_auc_score(y, p) - roc_auc_score(y, q), abs=1e-12)
        estimate, se = delong_difference(y, p, q)
        assert estimate == pytest.approx(interval.estimate, abs=1e-12)
        z = norm.ppf(0.95)
        assert interval.low == pytest.approx(estimate - z * se, abs=0.25 * z * se), (interval, se)
        assert interval.high == pytest.approx(estimate + z * se, abs=0.25 * z * se), (interval, se)


def test_weighted_auc_is_the_auc_of_the_resampled_rows() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.3).astype(float)
    score = np.round(rng.random(500) * 0.6 + 0.3 * y, 2)  # many ties
    draws = rng.integers(0, 500, size=(5, 500))
    counts = np.stack([np.bincount(d, minlength=500) for d in draws]).astype(np.float32)
    expected = [roc_auc_score(y[d], score[d]) for d in draws]
    assert weighted_auc(y, score, counts) == pytest.approx(expected, abs=1e-9)
    assert weighted_auc(y, score, None)[0] == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def straightforward_counts(n: int, samples: int, seed: int, groups: Any = None) -> np.ndarray:
    """The resample counts as first written (every block built, then concatenated): the
    blocked, in-place :class:`Resamples` must give these numbers bit for bit."""
    units = n if groups is None else int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, samples, 100):
        rows = min(100, samples - start)
        draws = rng.integers(0, units, size=(rows, units))
        flat = (draws + (np.arange(rows) * units)[:, None]).ravel()
        drawn = np.bincount(flat, minlength=rows * units).reshape(rows, units).astype(np.float32)
        chunks.append(drawn if groups is None else drawn[:, groups])
    return np.concatenate(chunks)


def straightforward_auc(y: np.ndarray, score: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    """Weighted ROC AUC as first written: the counts' columns sorted in one copy of the whole
    matrix, the on-time counts from their own product."""
    order = np.argsort(score, kind="mergesort")
    sorted_score, late = score[order], y[order].astype(np.float32)
    weights = np.ones((1, len(y)), dtype=np.float32) if counts is None else counts[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_score) != 0])
    out = []
    for begin in range(0, len(weights), 100):
        w = weights[begin : begin + 100]
        pos = np.add.reduceat(w * late, starts, axis=1)
        neg = np.add.reduceat(w * (1 - late), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        total = pos.sum(axis=1, dtype=float) * neg.sum(axis=1, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((pos * (below + 0.5 * neg)).sum(axis=1, dtype=float) / total)
    return np.concatenate(out)


@pytest.mark.parametrize("seed", [0, 7])
def test_the_blocked_bootstrap_gives_the_same_numbers_bit_for_bit(seed: int) -> None:
    """The gate's intervals are computed a block of resamples at a time, the picked columns
    in one reused buffer (issue 14: 1.9 -> 0.6 s on the full year's holdout). Same inputs,
    the same numbers to the last bit as the straightforward computation: counts, ROC AUC draws
    on the whole holdout and on slices (with ties, and with a slice small enough that some
    resamples hold a single class: NaN where it did), Brier means, cluster draws, and a
    resample count that is not a multiple of the block."""
    rng = np.random.default_rng(seed)
    n, samples = 3_001, 250
    y = (rng.random(n) < 0.25).astype(float)
    score = np.round(rng.random(n) * 0.7 + 0.2 * y, 3)  # many ties
    other = np.round(rng.random(n) * 0.7 + 0.1 * y, 2)
    resamples = Resamples(n, samples, seed, 0.95)
    counts = straightforward_counts(n, samples, seed)
    assert np.array_equal(resamples.counts, counts)
    groups = rng.integers(0, 400, size=n)
    groups[:400] = np.arange(400)  # every group present
    clustered = Resamples(n, samples, seed, 0.95, groups)
    assert np.array_equal(clustered.counts, straightforward_counts(n, samples, seed, groups))

    for mask in (None, rng.random(n) < 0.3, np.arange(n) < 12):
        rows = slice(None) if mask is None else mask
        cols = counts if mask is None else counts[:, mask]
        for a, b in ((score, other), (other, score)):
            expected = straightforward_auc(y[rows], a[rows], cols)
            got = weighted_auc(
                y[rows], a[rows], resamples.counts, None if mask is None else np.flatnonzero(mask)
            )
            assert np.array_equal(got, expected, equal_nan=True)
            if mask is not None and mask.sum() == 12:
                assert np.isnan(got).any()  # the tiny slice: some resamples drew no late flight
            interval = resamples.auc_difference(y, a, b, mask)
            draws = expected - straightforward_auc(y[rows], b[rows], cols)
            assert interval == resamples.interval(interval.estimate, draws)
            loss = (a[rows] - y[rows]) ** 2
            with np.errstate(invalid="ignore", divide="ignore"):
                brier = (cols @ loss) / cols.sum(axis=1, dtype=float)
            assert resamples.brier(y, a, mask) == resamples.interval(float(loss.mean()), brier)
        assert weighted_auc(y, score, None)[0] == straightforward_auc(y, score, None)[0]


def run_cycle(root: Path, *overrides: str) -> Any:
    """featurize -> train -> evaluate -> promote (when blessed), in-process, with overrides."""
    from pipelines.config import Settings, load_params
    from pipelines.steps.evaluate import evaluate
    from pipelines.steps.featurize import featurize
    from pipelines.steps.promote import promote_if_blessed
    from pipelines.steps.train import train

    settings = Settings(project_dir=root)
    params = load_params(settings, list(overrides))
    featurize(settings, params)
    train(settings, params)
    report = evaluate(settings, params)
    if report.blessed:
        promote_if_blessed(settings, params)
    return report


def test_the_gate_compares_on_the_days_unseen_by_both(january: Path) -> None:
    """A champion fitted on 2013-01-02..26; a challenger whose holdout (01-22..29) overlaps it is
    compared on 01-27..29 only, and the report says so; one whose whole holdout the champion
    saw is compared on all of it, flagged as favouring the champion."""
    from sklearn.metrics import roc_auc_score

    first = run_cycle(january, "data.window_end=2013-01-31", "train.max_iter=60")
    assert first.comparison is None and first.blessed
    check_model_card(january, first.run_id)
    report = run_cycle(
        january,
        "data.window_end=2013-01-29",
        "data.window_days=20",
        "data.holdout_days=8",
        "train.max_iter=60",
        "train.random_state=5",
    )
    c = report.comparison
    assert c["champion_trained"] == {"start": "2013-01-02", "end": "2013-01-26"}
    assert c["unseen_days"] == ["2013-01-27", "2013-01-28", "2013-01-29"] and c["days"] == 8
    assert c["overlap_days"] == [f"2013-01-{d}" for d in range(22, 27)] and not c["whole_holdout"]
    holdout = pd.read_parquet(january / "data/features/holdout.parquet")
    unseen = holdout[holdout["batch_date"] >= "2013-01-27"]
    assert c["rows"] == len(unseen) < len(holdout)
    # the estimate is the difference on those rows, recomputed here from both models
    import joblib
    import mlflow

    X, y = unseen[list(schema.FEATURES)], unseen[schema.TARGET]
    challenger = joblib.load(january / "models/model.joblib")
    champion = mlflow.sklearn.load_model(f"models:/flight-delay/{report.champion_version}")
    diff = roc_auc_score(y, challenger.predict_proba(X)[:, 1]) - roc_auc_score(
        y, champion.predict_proba(X)[:, 1]
    )
    check = next(ch for ch in report.checks if ch.name == "roc_auc vs champion")
    assert check.estimate == pytest.approx(diff, abs=1e-5)
    assert check.interval[0] <= check.estimate <= check.interval[1] and check.value == check.interval[0]
    text = (january / "reports/gate.md").read_text()
    assert "on the 3 of 8 holdout days unseen by both models" in text, text
    assert "left out: 2013-01-22, 2013-01-23, 2013-01-24, 2013-01-25, 2013-01-26" in text
    assert "at confidence 95%" in text and "| estimate (5%..95% bootstrap interval) |" in text
    metrics = json.loads((january / "metrics.json").read_text())["vs_champion"]
    assert metrics["roc_auc_diff"] == check.estimate and metrics["rows"] == c["rows"]

    seen = run_cycle(january, "data.window_end=2013-01-20", "data.window_days=15", "train.max_iter=60")
    assert seen.comparison["whole_holdout"] and seen.comparison["unseen_days"] == []
    assert seen.comparison["rows"] == len(pd.read_parquet(january / "data/features/holdout.parquet"))
    assert "which favours the champion" in (january / "reports/gate.md").read_text()


def test_the_airport_hour_bootstrap_draws_whole_hours(models: dict[str, Any]) -> None:
    """``evaluate.resample_unit: airport_hour`` draws an origin's scheduled hour of a day as one
    unit: every flight of an hour is counted as often as its hour was drawn, and the interval
    is wider than the flight-by-flight one (the flights of an hour share their weather)."""
    from pipelines.steps.evaluate import resamples_for

    holdout = models["holdouts"][1]
    cfg = {**models["cfg"], "resample_unit": "airport_hour", "resamples": 400}
    by_hour = resamples_for(holdout, cfg)
    hours = holdout.groupby(["batch_date", "origin", "sched_dep_hour"], observed=True).ngroup().to_numpy()
    assert by_hour.units == hours.max() + 1 < len(holdout) / 5
    for counts in by_hour.counts[:20]:  # one count per hour, shared by its flights
        per_hour = pd.Series(counts).groupby(hours).nunique()
        assert (per_hour == 1).all()
        assert pd.Series(counts).groupby(hours).first().sum() == by_hour.units  # k hours drawn of k
    # one flight per unit is the flight bootstrap itself (the same draws)
    flights = resamples_for(holdout, {**cfg, "resample_unit": "flight"})
    same = Resamples(len(holdout), 400, cfg["seed"], cfg["confidence"], np.arange(len(holdout)))
    assert np.array_equal(same.counts, flights.counts)
    y = holdout[schema.TARGET].to_numpy(dtype=float)
    p, q = proba(models["models"]["more days"], holdout), proba(models["models"]["champion"], holdout)
    wide, narrow = by_hour.auc_difference(y, p, q), flights.auc_difference(y, p, q)
    assert wide.estimate == narrow.estimate and wide.high - wide.low > 1.1 * (narrow.high - narrow.low)


def check_model_card(root: Path, run_id: str) -> None:
    """The card of a registered version: in the workspace (JSON, Markdown, HTML), on the run,
    and summarised in the version's description."""
    from mlflow import MlflowClient

    from pipelines import schema

    card = json.loads((root / "reports/model_card.json").read_text())
    assert card["run_id"] == run_id and card["data"]["train_rows"] > 10_000
    assert {r["feature"] for r in card["importance"]} == set(schema.FEATURES)
    drops = [r["mean"] for r in card["importance"]]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0.005, "something matters, and it is first"
    assert [m["name"] for m in card["metrics"]] == ["roc_auc", "brier"]
    assert all(m["interval"][0] <= m["estimate"] <= m["interval"][1] for m in card["metrics"])
    text = (root / "reports/model_card.md").read_text()
    for heading in (
        "## Data",
        "## Holdout metrics",
        "## Slices",
        "## What it relies on",
        "## Intended use",
        "## Known limits",
    ):
        assert heading in text, heading
    page = (root / "reports/model_card.html").read_text()
    assert "<h2>What it relies on</h2>" in page and f"<td>{card['importance'][0]['feature']}</td>" in page
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.search_model_versions(f"name='flight-delay' and run_id='{run_id}'")[0]
    assert version.description.startswith("**Model card** (gate: blessed)"), version.description
    assert f"runs:/{run_id}/gate/model_card.html" in version.description
    assert {a.path for a in client.list_artifacts(run_id, "gate")} >= {
        "gate/model_card.md",
        "gate/model_card.html",
    }


def test_shuffling_an_encoded_column_is_shuffling_the_feature(models: dict[str, Any]) -> None:
    """The model card's permutation importance shuffles the encoded column of a feature: the
    model's answers are the ones it gives when the raw column is shuffled."""
    from pipelines.card import encoded_columns, permutation_importance

    model, holdout = models["models"]["more days"], models["holdouts"][0].iloc[:800]
    X = holdout[list(schema.FEATURES)]
    encoded = encoded_columns(model, X)
    assert encoded is not None
    matrix, where, predict = encoded
    order = np.random.default_rng(5).permutation(len(X))
    for feature in ("carrier", "dest", "pressure", "sched_dep_minute_of_day"):
        raw = X.assign(**{feature: X[feature].to_numpy()[order]})
        shuffled = matrix.copy()
        shuffled[:, where[feature]] = matrix[order, where[feature]]
        assert np.array_equal(predict(shuffled)[:, 1], model.predict_proba(raw)[:, 1]), feature
    ranked = permutation_importance(model, X, holdout[schema.TARGET], 0)
    assert {r["feature"] for r in ranked} == set(schema.FEATURES) and ranked[0]["mean"] > 0
