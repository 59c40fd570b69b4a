"""retrain: run the DVC training core (featurize -> train -> evaluate) on a stable snapshot.

- The whole ``dvc repro`` runs under the workspace lock that ``validate`` also takes before
  it adds a batch to ``data/validated``: a nightly ingest landing meanwhile waits, so what a
  retrain trains on cannot change under it, and two DVC commands never run at once on one
  workspace (DVC's own repo lock would fail them instead of waiting). The ``dvc`` child holds
  the lock too: killed, this process leaves it to the child until the child ends.
- A manual trigger's Params arrive as ``--set`` overrides. The shared ``params.yaml`` is never
  edited: a run with overrides runs in a private copy of the workspace
  (:mod:`pipelines.runspace`), so a kill leaves the project's parameters untouched and the
  next scheduled retrain trains with the defaults. The train step records the overrides on
  the MLflow run (``mlops.overrides``).
- The result names the MLflow run whose gate report ``mlops promote --run RUN_ID`` consumes.
- ``--stage featurize|train|evaluate`` runs one DVC stage (``dvc repro --single-item``; DVC's
  cache decides whether it runs), in the same workspace for every stage of one Airflow run:
  the retrain DAG is one task per stage, so the UI shows where a run is and which stage refused.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipelines import faults, runspace
from pipelines.config import Params, Settings
from pipelines.layout import Layout
from pipelines.locks import workspace_lock
from pipelines.publish import publish_files
from pipelines.storage import clean_stale_temp
from pipelines.versioning import dvc_pull, dvc_push, dvc_remote, run_dvc

log = logging.getLogger(__name__)

# overrides that change what DVC computes; promote.* and rollback.* act after it
_DVC_SECTIONS = ("data", "train", "evaluate", "validate", "monitor")


STAGES = ("featurize", "train", "evaluate")


def retrain(settings: Settings, params: Params, stage: str | None = None) -> dict[str, Any]:
    home = settings.home_dir
    overrides = {k: v for k, v in params.overrides.items() if k.split(".")[0] in _DVC_SECTIONS}
    main = Layout.of(settings, params.get("validate.store"))
    with workspace_lock(home) as held:
        faults.point("retrain.locked")
        clean_stale_temp(main.staging)
        remote = dvc_remote(home, settings.dvc_remote, held=held)
        tracked = main.validated.with_suffix(".dvc")
        if remote and tracked.exists() and not main.validated.is_dir():  # a fresh host
            dvc_pull(home, remote, str(tracked.relative_to(home)), held=held)
        if overrides:
            key = runspace.run_key()
            runspace.clean_old(settings, keep=key)
            workdir = runspace.prepare(settings, overrides, key)
            env = runspace.step_env(settings, workdir)
            log.info(
                "retrain: this run's overrides %s, in %s (params.yaml untouched)",
                json.dumps(overrides),
                workdir,
            )
        else:
            workdir, env = home, None
        faults.point("retrain.prepared")
        args = ("repro", "--single-item", stage) if stage else ("repro",)
        proc = run_dvc(home, *args, held=held, cwd=workdir, env=env)
        faults.point("retrain.reproduced")
        if remote:  # window, features, model: `dvc pull` elsewhere restores this version
            dvc_push(home, remote, held=held, cwd=workdir)
            faults.point("retrain.pushed")
    layout = Layout(workdir, main.validated_dir)
    ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]
    result: dict[str, Any] = {"stage": stage or "all", "stages_run": ran, "overrides": overrides,
                              "workspace": str(workdir)}  # fmt: skip
    if stage == "featurize":
        result["window"] = json.loads((layout.reports / "featurize.json").read_text())
        return result
    trained = json.loads((layout.reports / "train.json").read_text())
    result.update(run_id=trained["run_id"], window=f"{trained['window_start']}..{trained['window_end']}")
    if stage == "train":
        return result
    gate = json.loads((layout.reports / "gate.json").read_text())
    names = ("gate.json", "gate.md", "train.json", "featurize.json")
    publish_files(settings, [(f"reports/gate/{trained['run_id']}/{n}", layout.reports / n) for n in names
                             if (layout.reports / n).exists()])  # fmt: skip
    faults.point("retrain.published")
    failed = [c["name"] for c in gate["checks"] if c["verdict"] == "fail"]
    result.update(verdict=gate["verdict"], failed_checks=failed, champion_before=gate["champion_version"],
                  gate_report=str(layout.reports / "gate.md"))  # fmt: skip
    log.info(
        "retrain: stages run %s; gate %s for run %s (promote it with: mlops promote --run %s)",
        ran or "none (up to date)", gate["verdict"], trained["run_id"], trained["run_id"],
    )  # fmt: skip
    return result
