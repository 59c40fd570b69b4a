"""The README's main job, twice in a row (what a newcomer does): scripts/demo.sh, which
`make demo` runs, in a fresh workspace. Both runs exit 0; the second trains nothing,
promotes nothing and says so; the audit log holds exactly one promotion."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, make_workspace

pytestmark = pytest.mark.e2e


def demo(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_TRACKING"))}
    env.update(MLOPS_PROJECT_DIR=str(root), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(REPO / "scripts/demo.sh")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip


def test_make_demo_twice(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    first = demo(root)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "promoted: v1 is the champion (audit record 2)." in first.stdout, first.stdout[-2000:]
    second = demo(root)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "nothing new to promote: v1 is already the champion (audit record 2)." in second.stdout
    assert "Running stage" not in second.stdout, "nothing changed, so dvc repro ran nothing"
    assert "[ok] audit log verified: 2 record(s)" in second.stdout
    timing = second.stdout.strip().splitlines()[-1]  # each phase's time, at the end
    assert timing.startswith("Time per phase: 1/5 ingest ") and "3/5 dvc repro " in timing, timing
    records = [json.loads(p.read_text()) for p in sorted((root / ".mlops/audit/flight-delay").glob("*.json"))]
    assert [r["action"] for r in records] == ["register", "promote"]
