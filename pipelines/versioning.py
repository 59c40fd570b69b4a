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
