"""train: fit the model on the window's training days and log everything to MLflow.

Logged on the run: every parameter (with this run's ``--set`` overrides), training
metrics, the model (signature + input example), the training dataset, and the lineage
tags ``mlops.data_version`` (DVC hash of ``data/window``), the window dates, the git
commit and ``mlops.fingerprint`` (data version + parameters + model code: two runs with the
same fingerprint train the same model). Writes ``models/model.joblib`` and
``reports/train.json`` (run id, model URI) for the evaluate and promote steps.

A run left RUNNING by a killed train is closed as FAILED by the next one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines import faults, schema
from pipelines.config import Params, Settings
from pipelines.errors import StepError
from pipelines.layout import Layout
from pipelines.storage import atomic_write_text, atomic_write_with, clean_stale_temp
from pipelines.tracking import close_stale_runs, connect, experiment_id, owner_tags, run_name
from pipelines.versioning import dvc_hash, git_commit

# the code that decides what model a window and parameters give (hashed into the fingerprint)
MODEL_CODE = ("model.py", "features.py", "schema.py", "steps/featurize.py", "steps/train.py")
# the parameters that do (the window itself is in the data version)
FINGERPRINT_PARAMS = ("data.holdout_days", "data.late_threshold_min")


def fingerprint(data_version: str, params: Params) -> str:
    """What makes a trained model what it is: the data version, the parameters that shape the
    model and the model code. A rolled-back model's fingerprint bars identical rebuilds."""
    import hashlib
    from pathlib import Path

    import pipelines

    package = Path(pipelines.__file__).parent
    code = hashlib.sha256(b"".join((package / name).read_bytes() for name in MODEL_CODE)).hexdigest()
    shaping = {k: v for k, v in params.flat().items() if k.startswith("train.") or k in FINGERPRINT_PARAMS}
    body = json.dumps({"data": data_version, "params": shaping, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


log = logging.getLogger(__name__)


def distinct_values(table: Any) -> Any:
    """A frame of each column's distinct values (missing included, repeated to one length),
    with the table's dtypes. MLflow infers a dataset's schema value by value (a column's
    type from the types of its values, ``required`` from whether any is missing): on the
    distinct values it infers the same schema as on the whole table, in milliseconds
    instead of seconds on a year of flights."""
    import numpy as np
    import pandas as pd

    uniques = {name: pd.unique(table[name]) for name in table.columns}
    length = max((len(values) for values in uniques.values()), default=0)
    return pd.DataFrame(
        {
            name: pd.Series(np.resize(values, length), dtype=table[name].dtype)
            for name, values in uniques.items()
        }
    )


def table_digest(table: Any) -> str:
    """MLflow's digest of a pandas dataset (``mlflow.data.digest_utils.compute_pandas_digest``),
    computed as MLflow does but for one step: MLflow finds the columns whose every value is a
    ``str`` by looking at the type of every value of the whole table (0.7 s on a year of
    flights), where a numeric column can hold none; here only the other columns are looked at.
    The same digest (a test compares it with MLflow's own)."""
    import numpy as np
    import pandas as pd
    from mlflow.data.digest_utils import MAX_ROWS, get_normalized_md5_digest

    trimmed = table.head(MAX_ROWS)
    others = table.select_dtypes(exclude=[np.number])
    all_str = pd.Series(False, index=table.columns)
    all_str[others.columns] = (others.map(type) == str).all(0)  # noqa: E721  # elementwise, as MLflow
    strings = trimmed.columns[all_str.to_numpy()]
    numeric = trimmed.select_dtypes(include=[np.number]).columns
    trimmed = trimmed[strings.union(numeric)]
    return str(
        get_normalized_md5_digest(
            [pd.util.hash_pandas_object(trimmed).values, np.int64(len(table))]
            + [str(x).encode() for x in table.columns]
        )
    )


def training_dataset(table: Any, source: str, name: str) -> Any:
    """The window as an MLflow dataset: digest (:func:`table_digest`) and profile of the whole
    table, its schema inferred on :func:`distinct_values` (the same digest and schema as
    MLflow's; tests compare them)."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    dataset = from_pandas(table, source=source, name=name, targets=schema.TARGET, digest=table_digest(table))
    # PandasDataset.schema is a cached property: give it the schema inferred the fast way
    dataset.__dict__["schema"] = infer_signature(distinct_values(table)).inputs
    return dataset


def lineage_tags(settings: Settings, layout: Layout) -> dict[str, str]:
    window = json.loads((layout.reports / "featurize.json").read_text())
    commit, dirty = git_commit(settings.home_dir)
    return {
        "mlops.data_version": dvc_hash(layout.window),
        "mlops.window_start": window["start"],
        "mlops.window_end": window["end"],
        "mlops.holdout_start": window["holdout_start"],
        "mlops.holdout_end": window["holdout_end"],
        "mlflow.source.git.commit": commit,
        "mlops.git_dirty": str(dirty).lower(),
    }


def train(settings: Settings, params: Params) -> dict[str, Any]:
    import joblib
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.metrics import log_loss, roc_auc_score

    import pipelines
    from pipelines.model import SKOPS_TRUSTED_TYPES, build_model, pip_requirements

    layout = Layout.of(settings, params.get("validate.store"))
    clean_stale_temp(layout.staging)  # what a killed run of a stage left (dvc repro re-runs it alone)
    features_file = layout.features / "train.parquet"
    if not features_file.exists():
        raise StepError(f"no training features at {features_file} (run `mlops featurize` first)")
    table = pd.read_parquet(features_file)
    X, y = table[list(schema.FEATURES)], table[schema.TARGET]
    if y.nunique() < 2:
        raise StepError(f"training set {features_file} has a single class: cannot train a classifier")
    tags = lineage_tags(settings, layout)
    tags["mlops.fingerprint"] = fingerprint(tags["mlops.data_version"], params)

    client = connect(settings)
    exp_id = experiment_id(settings, client)
    close_stale_runs(client, exp_id)
    model = build_model(params.section("train"))
    name = run_name("train", f"{tags['mlops.window_start']}..{tags['mlops.window_end']}")
    with mlflow.start_run(experiment_id=exp_id, run_name=name, tags=owner_tags()) as run:
        faults.point("train.run-started")
        started = time.perf_counter()
        model.fit(X, y)
        fit_seconds = time.perf_counter() - started
        faults.point("train.fitted")
        proba = model.predict_proba(X)[:, 1]
        mlflow.log_params({k: v for k, v in params.flat().items() if k.split(".")[0] in ("data", "train")})
        mlflow.set_tags({**tags, "mlops.step": "train", "mlops.overrides": json.dumps(params.overrides),
                         "mlops.orchestrator_run": os.environ.get("MLOPS_RUN", "")})  # fmt: skip
        mlflow.log_metrics({
            "train_rows": float(len(X)), "train_late_rate": float(y.mean()),
            "train_roc_auc": float(roc_auc_score(y, proba)), "train_log_loss": float(log_loss(y, proba)),
            "fit_seconds": fit_seconds, "n_iter": float(model[-1].n_iter_),
        })  # fmt: skip
        window_name = f"window {tags['mlops.window_start']}..{tags['mlops.window_end']}"
        dataset = training_dataset(table, source=str(layout.window), name=window_name)
        mlflow.log_input(dataset, context="training", tags={"data_version": tags["mlops.data_version"]})
        info = mlflow.sklearn.log_model(
            model, name="model",
            signature=infer_signature(X.head(200), proba[:200]),
            input_example=X.head(3), pip_requirements=pip_requirements(),
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            # the model's class travels with it: `mlflow models serve` elsewhere can load it
            code_paths=[str(Path(pipelines.__file__).parent)],
        )  # fmt: skip
        # the drift reference for monitoring: a sample of what this model was trained on,
        # with its own predictions, kept with the model so any machine can monitor it
        reference = X.assign(prediction=proba).sample(
            n=min(params.get("monitor.reference_rows"), len(X)), random_state=0
        )
        with tempfile.TemporaryDirectory() as tmp:
            reference.to_parquet(f"{tmp}/reference.parquet", index=False)
            mlflow.log_artifact(f"{tmp}/reference.parquet", artifact_path="reference")
        faults.point("train.logged")

    def stage_model(tmp: str) -> None:
        joblib.dump(model, tmp)
        faults.point("train.staged")

    # staged under a name clean_stale_temp knows: a run killed here leaves nothing for good
    atomic_write_with(layout.models / "model.joblib", stage_model, staging=layout.staging)
    result = {
        "run_id": run.info.run_id, "model_uri": info.model_uri, "experiment_id": exp_id,
        "data_version": tags["mlops.data_version"], "window_start": tags["mlops.window_start"],
        "window_end": tags["mlops.window_end"], "train_rows": len(X), "fit_seconds": round(fit_seconds, 2),
        "fingerprint": tags["mlops.fingerprint"], "run_name": name,
    }  # fmt: skip
    atomic_write_text(layout.reports / "train.json", json.dumps(result, indent=2))
    log.info("train: run %s fitted on %d rows in %.1fs (data %s)", run.info.run_id, len(X), fit_seconds,
             tags["mlops.data_version"])  # fmt: skip
    return result
