"""Run spaces: where a retrain's DVC pipeline runs when the run has its own parameters.

A retrain without overrides runs ``dvc repro`` in the project's workspace (its ``dvc.lock``
advances there). With overrides (``--set`` on the CLI, Params of a manual Airflow trigger)
the shared ``params.yaml`` is **never edited**: the pipeline runs in a private copy,
``.mlops/runs/<key>/``, holding

- ``params.yaml``: the project's, with this run's overrides applied (comments kept);
- ``dvc.yaml``, ``dvc.lock``, ``.dvcignore`` and every code file a stage depends on (copies);
- the DVC-tracked inputs (``data/validated``) as hard links (validated batches are never
  modified in place, only replaced);
- a DVC config without git (``core.no_scm``) whose cache is the project's, so a stage whose
  inputs did not change is restored from the cache instead of recomputed.

Its steps run with ``MLOPS_PROJECT_DIR`` = the copy and ``MLOPS_HOME`` = the project, so they
log to the project's tracking store, registry and audit log. Killed, a run leaves only its
private copy: the next run with the same key (an Airflow retry of the same DAG run) resumes
in it, and copies older than a day are removed by later retrains.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import Settings
from pipelines.storage import atomic_copy, atomic_write_text

KEEP_S = 24 * 3600


def run_key() -> str:
    """This run's key: the orchestrator's run (Airflow retries reuse it), else a fresh one."""
    run = os.environ.get("MLOPS_RUN", "")
    if run:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", run)[:120]
    return f"cli_{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:8]}"


def runs_dir(settings: Settings) -> Path:
    return settings.home_path(".mlops", "runs")


def write_overrides(source: Path, target: Path, overrides: dict[str, Any]) -> None:
    """``source`` params file with ``overrides`` (``section.key`` -> value) applied, written
    to ``target``; comments and layout kept."""
    import io

    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    document = yaml_rt.load(source.read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        document[section][key] = value
    buffer = io.StringIO()
    yaml_rt.dump(document, buffer)
    atomic_write_text(target, buffer.getvalue())


def _stage_paths(pipeline: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(every dep path, every out path) of dvc.yaml's stages."""
    deps: set[str] = set()
    outs: set[str] = set()
    for stage in (pipeline.get("stages") or {}).values():
        for dep in stage.get("deps", []):
            deps.add(str(dep))
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key, []) or []:
                outs.add(str(next(iter(out))) if isinstance(out, dict) else str(out))
    return deps, outs


def prepare(settings: Settings, overrides: dict[str, Any], key: str) -> Path:
    """The private copy for run ``key`` (created, or refreshed when it exists: a resumed run)."""
    home = settings.home_dir
    run_dir = runs_dir(settings) / key
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "dvc.lock", ".dvcignore"):
        if (home / name).exists() and not (name == "dvc.lock" and (run_dir / name).exists()):
            atomic_copy(home / name, run_dir / name)
    write_overrides(home / settings.params_file, run_dir / "params.yaml", overrides)
    pipeline = yaml.safe_load((home / "dvc.yaml").read_text()) or {}
    deps, outs = _stage_paths(pipeline)
    for dep in sorted(deps - outs):
        source, target = home / dep, run_dir / dep
        if (home / f"{dep.rstrip('/')}.dvc").exists():
            _link_tree(source, target)  # DVC-tracked data: hard links
        elif source.is_dir():
            _copy_tree(source, target)
        elif source.exists():
            atomic_copy(source, target)
    _dvc_config(home, run_dir)
    return run_dir


def _link_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest)


def _copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _dvc_config(home: Path, run_dir: Path) -> None:
    import configparser

    dvc = run_dir / ".dvc"
    dvc.mkdir(exist_ok=True)
    if (home / ".dvc" / "config").exists():
        atomic_copy(home / ".dvc" / "config", dvc / "config")
    parser = configparser.ConfigParser()
    parser.read(home / ".dvc" / "config.local")
    for section, values in {
        "core": {"no_scm": "true"},
        "cache": {"dir": str(home / ".dvc" / "cache")},
    }.items():
        if not parser.has_section(section):
            parser.add_section(section)
        for key, value in values.items():
            parser.set(section, key, value)
    with open(dvc / "config.local", "w") as handle:
        parser.write(handle)


def clean_old(settings: Settings, keep: str, max_age_s: float = KEEP_S) -> list[Path]:
    """Remove run copies older than ``max_age_s`` (never ``keep``); the caller holds the
    workspace lock, so none of them is in use."""
    removed: list[Path] = []
    folder = runs_dir(settings)
    if not folder.is_dir():
        return removed
    for run_dir in folder.iterdir():
        if run_dir.name != keep and time.time() - run_dir.stat().st_mtime > max_age_s:
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


def step_env(settings: Settings, run_dir: Path) -> dict[str, str]:
    """The environment of the stages in a run copy: their workspace is the copy, their home
    (tracking store, registry, audit log, locks) the project's."""
    env = os.environ.copy()
    env["MLOPS_PROJECT_DIR"] = str(run_dir)
    env["MLOPS_HOME"] = str(settings.home_dir)
    env.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    return env
