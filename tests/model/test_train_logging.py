"""The training dataset logged to MLflow: its schema is inferred on each column's distinct
values (seconds saved on a year of flights) and must be the schema MLflow infers on the
whole table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import schema
from pipelines.features import build_features, build_target
from pipelines.steps.train import distinct_values, table_digest, training_dataset


def whole_table_schema(table: pd.DataFrame):  # type: ignore[no-untyped-def]
    from mlflow.types.utils import _infer_schema  # what PandasDataset.schema calls

    return _infer_schema(table)


def test_schema_of_real_training_table_is_mlflows(january_template: Path) -> None:
    frames = [pd.read_parquet(p) for p in sorted((january_template / "data/validated").glob("*.parquet"))]
    batch = pd.concat(frames, ignore_index=True)
    table = build_features(batch)
    table[schema.TARGET] = build_target(batch, 15)
    assert table.isna().any().any(), "the real table has missing weather: the required flags are exercised"
    dataset = training_dataset(table, source="data/window", name="window")
    assert dataset.schema == whole_table_schema(table)
    assert dataset.profile == {"num_rows": len(table), "num_elements": int(table.size)}
    assert len(distinct_values(table)) < len(table)
    assert dataset.digest == mlflows_digest(table)


def mlflows_digest(table: pd.DataFrame) -> str:
    from mlflow.data.digest_utils import compute_pandas_digest  # what PandasDataset computes

    return str(compute_pandas_digest(table))


def test_digest_is_mlflows_on_every_kind_of_column() -> None:
    """The dataset's digest is computed without looking at every value of numeric columns;
    MLflow's own digest is the same whatever the columns hold: strings (some missing),
    categoricals, numbers, booleans, dates, mixed objects, more rows than MLflow hashes."""
    n = 12_000  # MLflow hashes the first 10,000 rows and counts the rest
    base = pd.DataFrame(
        {
            "code": ["AA", "B6"] * (n // 2),
            "count": np.arange(n, dtype="int64"),
            "rate": np.linspace(0, 1, n),
            "flag": [True, False] * (n // 2),
            "when": pd.date_range("2013-01-01", periods=n, freq="min"),
            "origin": pd.Categorical(["EWR", "JFK", "LGA"] * (n // 3)),
            "mixed": ["x", 1] * (n // 2),
        }
    )
    tables = {"all": base, "numbers only": base[["count", "rate"]], "no numbers": base[["code", "origin"]]}
    late_missing = base.copy()
    late_missing.loc[n - 1, "code"] = None  # past MLflow's 10,000 rows: still not all strings
    tables["a string column with one missing value"] = late_missing
    for name, table in tables.items():
        assert table_digest(table) == mlflows_digest(table), name
    assert table_digest(late_missing) != table_digest(base)


def test_schema_keeps_types_and_missing_values_of_rare_rows() -> None:
    n = 5000
    table = pd.DataFrame(
        {
            "code": ["AA"] * n,
            "count": np.arange(n, dtype="int64"),
            "small": np.ones(n, dtype="int8"),
            "flag": [True] * n,
            "rate": np.linspace(0, 1, n),
            "when": pd.date_range("2013-01-01", periods=n, freq="min"),
            "late": np.zeros(n, dtype="int8"),
        }
    )
    table.loc[n - 1, "rate"] = np.nan  # one missing value, in the last row
    table.loc[n - 2, "code"] = None
    fast = training_dataset(table, source="x", name="x").schema
    assert fast == whole_table_schema(table)
    required = {spec.name: spec.required for spec in fast.inputs}
    assert required["rate"] is False and required["code"] is False and required["count"] is True
