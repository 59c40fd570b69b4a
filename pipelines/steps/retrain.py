"""retrain: run the DVC training core (featurize -> train -> evaluate) on a stable snapshot.

- The whole ``dvc repro`` runs under the workspace lock that ``validate`` also takes before
  it adds a batch to ``data/validated``: a nightly ingest landing meanwhile waits, so what a
  retrain trains on cannot change under it, and two DVC commands never run at once on one
  workspace (DVC's own repo lock would fail them instead of waiting).
- A manual trigger's Params arrive as ``--set`` overrides. DVC reads ``params.yaml``, so they
  are written there for this run (comments kept) and ``dvc.lock`` records them; the file is
  restored afterwards, so the next scheduled retrain uses the defaults again. The train step
  also records them on the MLflow run (``mlops.overrides``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipelines.config import Params, Settings
from pipelines.layout import Layout
from pipelines.publish import publish_files
from pipelines.versioning import dvc_pull, dvc_push, dvc_remote, run_dvc, workspace_lock

log = logging.getLogger(__name__)

# overrides that change what DVC computes; promote.* and rollback.* act after it
_DVC_SECTIONS = ("data", "train", "evaluate", "validate", "monitor")


def write_overrides(path: Any, overrides: dict[str, Any]) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    document = yaml.load(path.read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        document[section][key] = value
    with open(path, "w") as handle:
        yaml.dump(document, handle)


def retrain(settings: Settings, params: Params) -> dict[str, Any]:
    layout = Layout.of(settings, params.get("validate.store"))
    params_file = settings.path(settings.params_file)
    overrides = {k: v for k, v in params.overrides.items() if k.split(".")[0] in _DVC_SECTIONS}
    with workspace_lock(settings.root):
        remote = dvc_remote(settings.root, settings.dvc_remote, locked=False)
        tracked = layout.validated.with_suffix(".dvc")
        if remote and tracked.exists() and not layout.validated.is_dir():  # a fresh host
            dvc_pull(settings.root, remote, str(tracked.relative_to(settings.root)), locked=False)
        original = params_file.read_text()
        try:
            if overrides:
                write_overrides(params_file, overrides)
                log.info("retrain: this run's overrides %s", json.dumps(overrides))
            proc = run_dvc(settings.root, "repro", locked=False)
        finally:
            if overrides:
                params_file.write_text(original)
        if remote:  # window, features, model: `dvc pull` elsewhere restores this version
            dvc_push(settings.root, remote, locked=False)
    ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]
    gate = json.loads((layout.reports / "gate.json").read_text())
    trained = json.loads((layout.reports / "train.json").read_text())
    names = ("gate.json", "gate.md", "train.json", "featurize.json")
    publish_files(settings, [(f"reports/gate/{trained['run_id']}/{n}", layout.reports / n) for n in names
                             if (layout.reports / n).exists()])  # fmt: skip
    log.info(
        "retrain: stages run %s; gate %s for run %s",
        ran or "none (up to date)",
        gate["verdict"],
        trained["run_id"],
    )
    return {"stages_run": ran, "run_id": trained["run_id"], "verdict": gate["verdict"],
            "window": f"{trained['window_start']}..{trained['window_end']}", "overrides": overrides}  # fmt: skip
