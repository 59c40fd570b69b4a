"""DVC seam: run DVC commands one at a time per workspace, and hash data like DVC does.

DVC takes a repo-wide lock and fails (rather than waits) when another DVC command holds
it; every DVC call of the pipeline goes through :func:`run_dvc`, which holds our own
workspace lock (:func:`pipelines.locks.workspace_lock`) first, so a nightly ingest and a
retrain never collide. The ``dvc`` child inherits that lock: if the calling process is
killed, the lock stays held until the child has finished too.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines.locks import HeldLock, workspace_lock

log = logging.getLogger(__name__)


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def run_dvc(
    root: Path,
    *args: str,
    held: HeldLock | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``dvc ARGS`` in ``cwd`` (default ``root``); raise with DVC's own message on failure.

    ``held``: the workspace lock the caller already holds (it is not re-entrant); without it
    the lock is taken for this call. The child inherits the lock either way.
    """
    if held is None:
        with workspace_lock(root) as lock:
            return run_dvc(root, *args, held=lock, cwd=cwd, env=env)
    cmd = [dvc_executable(), *args]
    fd = held.inheritable_fd()
    # DVC sends a usage report after every command from a detached process of its own
    # (a Python start-up and a network call each time) unless told not to: like GX's
    # analytics and MLflow's telemetry, off unless the caller's environment says otherwise
    env = {"DVC_NO_ANALYTICS": "1", **(env if env is not None else os.environ)}
    proc = subprocess.Popen(
        cmd, cwd=cwd or root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, pass_fds=(fd,) if fd is not None else (),
    )  # fmt: skip
    held.note_child(proc.pid)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        lines = [line.strip() for line in f"{stdout}\n{stderr}".splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR")]
        reason = errors[-1] if errors else (lines[-1] if lines else f"exit {proc.returncode}")
        raise RuntimeError(f"`dvc {' '.join(args)}` failed: {reason}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir()


def dvc_hash(path: Path) -> str:
    """The md5 DVC records for ``path`` (``<md5>.dir`` for a folder), as in dvc.lock."""
    import tempfile

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(path), fs, "md5")
    return str(obj.hash_info.value)


def git_commit(root: Path) -> tuple[str, bool]:
    """(HEAD commit, whether tracked files differ from it); ("", False) outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "", False
    return head, bool(dirty)


def dvc_remote(root: Path, url: str = "", *, held: HeldLock | None = None) -> str | None:
    """The DVC remote data versions go to, or None (embedded default: the local cache only).

    ``url`` (``MLOPS_DVC_REMOTE``) is configured as the default remote ``mlops`` in
    ``.dvc/config.local`` (never committed); otherwise the repo's own default remote, from
    ``.dvc/config`` / ``config.local``, is used. Endpoint and credentials come from the
    standard AWS variables, which DVC reads too. ``held``: the workspace lock, when the caller
    already holds it (it is not re-entrant).
    """
    import configparser

    local = root / ".dvc" / "config.local"
    if url:
        parser = configparser.ConfigParser()
        parser.read(local)
        section = "'remote \"mlops\"'"
        if (
            parser.get(section, "url", fallback=None) != url
            or parser.get("core", "remote", fallback="") != "mlops"
        ):
            run_dvc(root, "remote", "add", "--local", "--force", "--default", "mlops", url, held=held)
        return "mlops"
    for path in (local, root / ".dvc" / "config"):
        parser = configparser.ConfigParser()
        parser.read(path)
        name = parser.get("core", "remote", fallback="").strip()
        if name:
            return name
    return None


def dvc_push(
    root: Path, remote: str, *targets: str, held: HeldLock | None = None, cwd: Path | None = None
) -> None:
    """``dvc push`` to ``remote``; a failure raises StorageError naming the remote."""
    from pipelines.storage import StorageError

    try:
        run_dvc(root, "push", "--quiet", "--remote", remote, *targets, held=held, cwd=cwd)
    except RuntimeError as exc:
        raise StorageError(f"pushing data versions to DVC remote {remote!r} failed: {exc}") from None


def dvc_pull(root: Path, remote: str, *targets: str, held: HeldLock | None = None) -> None:
    from pipelines.storage import StorageError

    try:
        run_dvc(root, "pull", "--quiet", "--remote", remote, *targets, held=held)
    except RuntimeError as exc:
        raise StorageError(f"pulling data versions from DVC remote {remote!r} failed: {exc}") from None
