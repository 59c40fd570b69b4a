"""DVC seam: run DVC commands one at a time per workspace, and hash data like DVC does.

DVC takes a repo-wide lock and fails (rather than waits) when another DVC command holds
it; every DVC call of the pipeline goes through :func:`run_dvc`, which waits on a file lock
of our own first, so a nightly ingest and a retrain never collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """An exclusive lock held across processes on one host (blocks until free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the %s lock (%s)", what, path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def workspace_lock(root: Path) -> contextlib.AbstractContextManager[None]:
    """The lock every DVC command and every change to ``data/validated`` takes."""
    return file_lock(root / ".mlops" / "dvc.lock", "DVC workspace")


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def run_dvc(root: Path, *args: str, locked: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dvc ARGS`` in ``root``; raise with DVC's own message on failure."""
    cmd = [dvc_executable(), *args]
    ctx = workspace_lock(root) if locked else contextlib.nullcontext()
    with ctx:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"`dvc {' '.join(args)}` failed: {message[-1] if message else proc.returncode}")
    return proc


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


def dvc_remote(root: Path, url: str = "", *, locked: bool = True) -> str | None:
    """The DVC remote data versions go to, or None (embedded default: the local cache only).

    ``url`` (``MLOPS_DVC_REMOTE``) is configured as the default remote ``mlops`` in
    ``.dvc/config.local`` (never committed); otherwise the repo's own default remote, from
    ``.dvc/config`` / ``config.local``, is used. Endpoint and credentials come from the
    standard AWS variables, which DVC reads too. ``locked=False`` when the caller already
    holds the workspace lock (it is not re-entrant).
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
            run_dvc(root, "remote", "add", "--local", "--force", "--default", "mlops", url, locked=locked)
        return "mlops"
    for path in (local, root / ".dvc" / "config"):
        parser = configparser.ConfigParser()
        parser.read(path)
        name = parser.get("core", "remote", fallback="").strip()
        if name:
            return name
    return None


def dvc_push(root: Path, remote: str, *targets: str, locked: bool = True) -> None:
    """``dvc push`` to ``remote``; a failure raises StorageError naming the remote."""
    from pipelines.storage import StorageError

    try:
        run_dvc(root, "push", "--quiet", "--remote", remote, *targets, locked=locked)
    except RuntimeError as exc:
        raise StorageError(f"pushing data versions to DVC remote {remote!r} failed: {exc}") from None


def dvc_pull(root: Path, remote: str, *targets: str, locked: bool = True) -> None:
    from pipelines.storage import StorageError

    try:
        run_dvc(root, "pull", "--quiet", "--remote", remote, *targets, locked=locked)
    except RuntimeError as exc:
        raise StorageError(f"pulling data versions from DVC remote {remote!r} failed: {exc}") from None
