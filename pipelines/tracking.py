"""MLflow tracking seam: one place that points MLflow at the configured store."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pipelines.config import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at the tracking store and return a client.

    The embedded default is a SQLite store in the project folder, with artifacts in
    ``mlartifacts/``; ``MLFLOW_TRACKING_URI`` (or ``MLOPS_TRACKING_URI``) selects a server.
    """
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings, client: MlflowClient, suffix: str = "") -> str:
    """The pipeline's experiment (``suffix`` e.g. "-monitoring" for a sibling), created on
    first use (artifacts beside the SQLite store by default, rather than in whatever folder
    the process happens to run in)."""
    name = settings.experiment + suffix
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = settings.artifact_root if settings.mlflow_uri.startswith("sqlite:") else None
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:  # created concurrently by another step
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)
