"""Configuration: infrastructure from the environment, tunables from params.yaml.

Infrastructure (where things live) comes from environment variables with the prefix
``MLOPS_`` plus the standard ``MLFLOW_TRACKING_URI``; the defaults are the embedded ones
(SQLite MLflow store and local folders under the project directory), so nothing needs a
server. Tunables (model, data window, gate thresholds) come from ``params.yaml`` and can be
overridden per run with ``--set section.key=value``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from pipelines.storage import ObjectStore

# MLflow's set_tracking_uri() writes MLFLOW_TRACKING_URI into this process's environment;
# what the user set is captured once, at import, so a second Settings in the same process
# (tests, notebooks) is not pointed at the first one's store.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "")


class Settings(BaseSettings):
    """Where things live. Every field can be set as ``MLOPS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore")

    project_dir: Path = Field(default_factory=Path.cwd)
    # Where the state shared by every run of this project lives: the embedded tracking store
    # (mlflow.db, mlartifacts/), .mlops/ (locks, audit log, caches). "" = project_dir. A retrain
    # with overrides runs its DVC stages in a private copy (project_dir) of this home.
    home: Path | None = None
    params_file: str = "params.yaml"
    tracking_uri: str = ""  # falls back to MLFLOW_TRACKING_URI, then SQLite in the home
    experiment: str = "flight-delay"
    actor: str = ""  # who acts; set by the Airflow step operator to the user who triggered the run
    # Where other hosts read what a step produced (validated and quarantined batches,
    # reports, prediction logs): s3://bucket/prefix or file:///path; "" = this folder only.
    store_uri: str = ""
    # The DVC remote data versions are pushed to (s3://bucket/prefix); "" = the repo's own
    # default remote (`dvc remote add -d`), if any. Written to .dvc/config.local, not the repo.
    dvc_remote: str = ""
    # The lock every host takes to move the champion: postgresql://... (scaled out) or
    # file:///dir (one host). "" = a file lock beside a SQLite registry.
    lock_uri: str = ""
    # The append-only audit log of the registry: s3://... or file:///... "" = <store>/audit,
    # or beside a SQLite registry.
    audit_uri: str = ""
    # An unreachable tracking server fails a command within about this many seconds.
    registry_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    def model_post_init(self, __context: Any) -> None:
        """Inside a DVC experiment's workspace (``dvc exp run --temp`` or ``--queue`` run the
        stages in ``<project>/.dvc/tmp/exps/<exp>/``), the workspace is that folder and the
        home is the project: the experiment logs to the project's tracking store, gates
        against its champion and uses its audit log, instead of a throw-away copy's."""
        if self.home is not None:
            return
        cwd = Path.cwd().resolve()
        parts = cwd.parts
        for i in range(len(parts) - 3):
            if parts[i : i + 3] == (".dvc", "tmp", "exps"):
                self.home = Path(*parts[:i])
                self.project_dir = cwd
                return

    @property
    def root(self) -> Path:
        return self.project_dir.resolve()

    @property
    def home_dir(self) -> Path:
        return (self.home or self.project_dir).resolve()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def home_path(self, *parts: str) -> Path:
        return self.home_dir.joinpath(*parts)

    @property
    def mlflow_uri(self) -> str:
        explicit = self.tracking_uri or _USER_TRACKING_URI
        return explicit or f"sqlite:///{self.home_path('mlflow.db')}"

    @property
    def artifact_root(self) -> str:
        return self.home_path("mlartifacts").as_uri()

    @property
    def registry_dir(self) -> Path | None:
        """The folder of a SQLite registry (its lock and audit log live beside it); None
        for a tracking server."""
        uri = self.mlflow_uri
        if uri.startswith("sqlite:///"):
            return Path(uri.removeprefix("sqlite:///")).resolve().parent
        return None

    def store(self) -> ObjectStore | None:
        """The publishing store, or None on the embedded default."""
        from pipelines.storage import open_store

        return open_store(self.store_uri) if self.store_uri else None

    @property
    def who(self) -> str:
        return str(self.actor_record()["name"])

    def actor_record(self) -> dict[str, Any]:
        """Who acts, and how we know: an Airflow run passes the user who triggered it (the
        step operator sets MLOPS_ACTOR from the run and MLOPS_ACTOR_SOURCE=airflow); a CLI
        user is the environment's, marked as not authenticated by the pipeline."""
        import getpass

        source = os.environ.get("MLOPS_ACTOR_SOURCE", "")
        run = os.environ.get("MLOPS_RUN") or None
        if source == "airflow":
            if self.actor:
                return {"name": self.actor, "source": "airflow", "authenticated": True, "run": run}
            kind = os.environ.get("MLOPS_RUN_TYPE") or "scheduled"
            return {"name": f"airflow:{kind}", "source": "airflow", "authenticated": True, "run": run}
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        if self.actor:
            return {"name": self.actor, "source": f"cli (MLOPS_ACTOR; OS user {user})",
                    "authenticated": False, "run": run}  # fmt: skip
        return {"name": user, "source": "cli (OS user)", "authenticated": False, "run": run}


class ConfigError(ValueError):
    """A parameter or override that cannot be used; the message names it."""


@dataclass(frozen=True)
class Params:
    """params.yaml with the run's overrides applied."""

    values: dict[str, Any]
    overrides: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        try:
            section = self.values[name]
        except KeyError:
            raise ConfigError(f"params.yaml has no section {name!r}") from None
        if not isinstance(section, dict):
            raise ConfigError(f"params.yaml section {name!r} is not a mapping")
        return section

    def get(self, dotted: str) -> Any:
        section, _, key = dotted.partition(".")
        values = self.section(section)
        if key not in values:
            raise ConfigError(f"params.yaml has no key {dotted!r}")
        return values[key]

    def flat(self) -> dict[str, Any]:
        """All parameters as ``section.key`` -> value (for logging on MLflow runs)."""
        return {f"{s}.{k}": v for s, kv in self.values.items() if isinstance(kv, dict) for k, v in kv.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` -> (``section.key``, YAML-typed value)."""
    key, sep, raw = text.partition("=")
    if not sep or "." not in key or not key.split(".", 1)[1]:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
    except ValueError:  # YAML's date reading of an impossible date (2013-02-30): the schema says why
        value = raw
    return key.strip(), value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else str(problem)


def load_params(settings: Settings, overrides: list[str] | None = None) -> Params:
    """Read params.yaml, apply ``--set`` overrides and check the whole through the settings
    schema (:mod:`pipelines.params_schema`): any problem is a :class:`ConfigError` (exit 2)
    with one line naming the key, the value, where it came from and what is allowed."""
    from pipelines import params_schema

    path = settings.path(settings.params_file)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name} is not valid YAML: {_yaml_problem(exc)}") from None
    except ValueError as exc:  # e.g. an impossible date (2013-02-30) that YAML reads as one
        raise ConfigError(f"{path.name}: a value YAML cannot read: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path.name}: expected a mapping of sections, got {type(values).__name__}")
    values = copy.deepcopy(values)
    applied: list[str] = []
    origin: dict[str, str] = {}
    for text_ in overrides or []:
        key, value = parse_override(text_)
        section, name = key.split(".", 1)
        if not isinstance(values.get(section), dict) or name not in values[section]:
            known = params_schema.SECTIONS.get(section)
            hint = ""
            if known is not None:
                import difflib

                close = difflib.get_close_matches(name, list(known.model_fields), n=1)
                hint = f" (did you mean {section}.{close[0]}?)" if close else ""
            raise ConfigError(f"--set {key}: not a parameter{hint}")
        values[section][name] = value
        applied.append(key)
        origin[key] = f"--set {text_}"
    try:
        checked = params_schema.check(values, origin)
    except ValueError as exc:
        message = str(exc)
        raise ConfigError(
            message if message.startswith(("--set", path.name)) else f"{path.name}: {message}"
        ) from None
    return Params(
        values=checked, overrides={k: checked[k.split(".")[0]][k.split(".", 1)[1]] for k in applied}
    )
