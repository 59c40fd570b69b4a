"""Model tests: what the model may use, and how it must behave (behavioural checks in the
spirit of Made With ML: invariance and direction), on a model trained on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import schema
from pipelines.features import build_features, build_target


@pytest.fixture(scope="module")
def trained(january_template: Path):  # type: ignore[no-untyped-def]
    from pipelines.model import build_model

    frames = [pd.read_parquet(p) for p in sorted((january_template / "data/validated").glob("*.parquet"))]
    batch = pd.concat(frames, ignore_index=True)
    params = {"learning_rate": 0.08, "max_iter": 300, "max_leaf_nodes": 31, "min_samples_leaf": 40,
              "l2_regularization": 1.0, "early_stopping": True, "random_state": 13, "monotonic_weather": True}  # fmt: skip
    train, test = batch[batch["day"] <= 25], batch[batch["day"] > 25]
    model = build_model(params).fit(build_features(train), build_target(train, 15))
    return model, test, params


def test_no_feature_is_known_only_after_the_flight() -> None:
    leaks = {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"}
    assert set(schema.OUTCOME_COLUMNS) == leaks
    assert not leaks & set(schema.FEATURES)
    batch = pd.DataFrame({c: [1] for c in schema.BATCH_COLUMNS}).assign(
        year=2013,
        carrier="UA",
        origin="EWR",
        dest="IAH",
        tailnum="N1",
        time_hour="2013-01-01T10:00:00Z",
        sched_dep_time=515,
    )
    features = build_features(batch)
    assert list(features.columns) == list(schema.FEATURES)
    # changing every outcome column changes no feature
    changed = batch.assign(**{c: 999 for c in leaks})
    pd.testing.assert_frame_equal(build_features(changed), features)


def test_cancelled_and_diverted_flights_count_as_disrupted() -> None:
    batch = pd.DataFrame({"arr_delay": [np.nan, 3.0, 15.0, 16.0, -20.0]})
    assert build_target(batch, 15).tolist() == [1, 0, 0, 1, 0]


def test_model_beats_chance_on_later_days(trained) -> None:  # type: ignore[no-untyped-def]
    from sklearn.metrics import roc_auc_score

    model, test, _ = trained
    proba = model.predict_proba(build_features(test))[:, 1]
    assert roc_auc_score(build_target(test, 15), proba) > 0.6


def test_invariant_to_flight_number_and_tail_number(trained) -> None:  # type: ignore[no-untyped-def]
    model, test, _ = trained
    renamed = test.assign(flight=test["flight"] + 1000, tailnum="N00000")
    a = model.predict_proba(build_features(test))[:, 1]
    b = model.predict_proba(build_features(renamed))[:, 1]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("column", "worse"),
    [("precip", lambda s: s + 0.3), ("visib", lambda s: s * 0.2), ("wind_speed", lambda s: s + 15)],
    ids=["more rain", "less visibility", "more wind"],
)
def test_worse_weather_at_departure_never_lowers_the_risk(trained, column, worse) -> None:  # type: ignore[no-untyped-def]
    model, test, _ = trained
    features = build_features(test)
    stormy = features.assign(**{column: worse(features[column])})
    before = model.predict_proba(features)[:, 1]
    after = model.predict_proba(stormy)[:, 1]
    assert after.mean() >= before.mean()
    assert (after >= before - 1e-12).all(), "monotonic constraints hold flight by flight"


def test_unknown_codes_are_scored_not_rejected(trained) -> None:  # type: ignore[no-untyped-def]
    model, test, _ = trained
    features = build_features(test.head(20)).assign(carrier="QQ", dest="ZZZ")
    proba = model.predict_proba(features)[:, 1]
    assert np.isfinite(proba).all() and ((proba > 0) & (proba < 1)).all()


def test_training_is_reproducible(trained) -> None:  # type: ignore[no-untyped-def]
    from pipelines.model import build_model

    _model, test, params = trained
    features = build_features(test)
    target = build_target(test, 15)
    a = build_model(params).fit(features, target).predict_proba(features)[:, 1]
    b = build_model(params).fit(features, target).predict_proba(features)[:, 1]
    np.testing.assert_array_equal(a, b)


def test_the_model_is_the_same_for_any_number_of_threads(trained) -> None:  # type: ignore[no-untyped-def]
    """The test suite runs one OpenMP thread per pytest-xdist worker (tests/conftest.py), a
    laptop or an Airflow worker as many as it has cores: the fit and its predictions must not
    depend on that."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from pipelines.model import build_model

    _model, test, params = trained
    features, target = build_features(test), build_target(test, 15)
    runs = {}
    for threads in (1, 2, 4):
        with threadpool_limits(limits=threads, user_api="openmp"):
            assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"} == {threads}
            fitted = build_model(params).fit(features, target)
            runs[threads] = (fitted[-1].n_iter_, fitted.predict_proba(features)[:, 1])
    for threads in (2, 4):
        assert runs[threads][0] == runs[1][0]
        np.testing.assert_array_equal(runs[threads][1], runs[1][1])
