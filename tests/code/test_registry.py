"""Code tests of the registry seam and its promotion protocol on a real MLflow SQLite store:
compare-and-set moves (I3), idempotent re-runs (I4), completion of a move whose process
stopped after writing its record (I2), alias moves made outside mlops, the audit log and its
verification, "absent" vs "unreachable", and two processes from two project folders racing
for one shared registry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.audit import mirror_key
from pipelines.config import Settings
from pipelines.errors import RegistryConflict
from pipelines.registry import (
    CHALLENGER,
    CHAMPION,
    Move,
    Registry,
    RegistryUnavailable,
    previous_champion,
    rolled_back,
)
from pipelines.steps.status import verify_registry

NAME = "flight-delay"


def new_registry(tmp_path: Path, actor: str = "tester") -> Registry:
    return Registry(Settings(project_dir=tmp_path, actor=actor), NAME)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A registry with three registered versions of a tiny real sklearn model."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    reg = new_registry(tmp_path)
    X, y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])
    for i in range(3):
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(LogisticRegression(C=1.0 + i).fit(X, y), name="model",
                                            pip_requirements=["scikit-learn"])  # fmt: skip
        _, created = reg.register(info.model_uri, run.info.run_id, tags={"mlops.fingerprint": f"fp{i + 1}"})
        assert created
    return reg


def promote(reg: Registry, target: str, expected: str | None, **details: object) -> bool:
    return reg.move(Move("promote", target, expected, f"to v{target}", details=dict(details))).changed


def test_register_is_idempotent_per_run_and_sets_challenger(registry: Registry) -> None:
    v3 = registry.alias(CHALLENGER)
    assert v3 is not None and v3.version == "3" and v3.tags["mlops.fingerprint"] == "fp3"
    again, created = registry.register(v3.source, v3.run_id, tags={"mlops.gate_verdict": "blessed"})
    assert again.version == "3" and not created and registry.get("4") is None
    assert registry.get("3").tags["mlops.gate_verdict"] == "blessed"  # type: ignore[union-attr]


def test_absent_is_not_unreachable(tmp_path: Path) -> None:
    fresh = new_registry(tmp_path)
    assert fresh.aliases() == {} and fresh.alias(CHAMPION) is None and fresh.get("1") is None
    down = Registry(
        Settings(project_dir=tmp_path, tracking_uri="http://127.0.0.1:9", registry_timeout_s=5), NAME
    )
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"http://127\.0\.0\.1:9 unreachable"):
        down.alias(CHAMPION)
    assert time.monotonic() - started < 15


def test_champion_moves_by_compare_and_set_and_reruns_are_no_ops(registry: Registry) -> None:
    assert promote(registry, "1", None)
    assert not promote(registry, "1", None), "the same move again: nothing to do (I4)"
    with pytest.raises(RegistryConflict, match=r"the champion is v1, not no champion as expected"):
        promote(registry, "2", None)
    assert registry.aliases()[CHAMPION] == "1"
    assert promote(registry, "2", "1")
    v2 = registry.get("2")
    assert (
        v2 is not None
        and v2.tags["mlops.previous_champion"] == "1"
        and v2.tags["mlops.promoted_by"] == "tester"
    )
    records = registry.audit_records()
    assert [r["action"] for r in records] == ["promote", "conflict", "promote"]
    assert records[1]["found"] == "1" and records[1]["expected"] is None
    assert records[2]["actor"] == {"name": "tester", "source": "cli (MLOPS_ACTOR; OS user " + records[2]["actor"]["source"].split("OS user ")[1],
                                   "authenticated": False, "run": None}  # fmt: skip
    check, _ = verify_registry(registry)
    assert check.ok, check.problems


def test_a_recorded_move_whose_process_died_is_completed_by_the_next_mover(registry: Registry) -> None:
    """The record is written before the alias moves (I2): a process that stops right after
    the record leaves the alias behind; verify says so; the next mover completes the move
    and then refuses its own stale one."""
    promote(registry, "1", None)
    # what a process killed after writing its record leaves: the record, no alias move, no mirror
    registry.audit_log.append("promote", {"from": "1", "to": "2", "reason": "killed", "forced": False,
                                          "actor": {"name": "ghost"}})  # fmt: skip
    check, _ = verify_registry(registry)
    assert not check.ok and any("a move was interrupted" in p for p in check.problems), check.problems
    with pytest.raises(RegistryConflict, match="the champion is v2, not v1"):
        promote(registry, "3", "1")
    assert registry.aliases()[CHAMPION] == "2"
    assert registry.get("2").tags["mlops.champion_record"] == "2"  # type: ignore[union-attr]
    check, records = verify_registry(registry)
    assert check.ok, check.problems
    assert [r["action"] for r in records] == ["promote", "promote", "conflict"], (
        "completed, not recorded twice"
    )


def test_an_alias_moved_outside_mlops_is_reported_then_recorded(registry: Registry) -> None:
    promote(registry, "1", None)
    registry.client.set_registered_model_alias(NAME, CHAMPION, "3")  # the MLflow UI, by hand
    check, _ = verify_registry(registry)
    assert not check.ok and "moved outside mlops" in check.summary()
    with pytest.raises(RegistryConflict):
        promote(registry, "2", "1")
    records = registry.audit_records()
    assert [r["action"] for r in records] == ["promote", "external", "conflict"]
    assert (records[1]["from"], records[1]["to"]) == ("1", "3")
    check, _ = verify_registry(registry)
    assert check.ok and check.notes and "outside mlops" in check.notes[0]


def test_verify_reports_tampering(registry: Registry) -> None:
    promote(registry, "1", None)
    promote(registry, "2", "1")
    promote(registry, "3", "2")
    client, log = registry.client, registry.audit_log
    assert verify_registry(registry)[0].ok

    client.delete_registered_model_tag(NAME, mirror_key(2))
    assert any(
        "record 2 (promote) is missing from MLflow" in p for p in verify_registry(registry)[0].problems
    )
    record = log.read(2)
    edited = json.loads(json.dumps(record))
    edited["reason"] = "nothing to see"
    client.set_registered_model_tag(
        NAME, mirror_key(2), json.dumps(edited, sort_keys=True, separators=(",", ":"))
    )
    assert any("record 2 (promote) differs in MLflow" in p for p in verify_registry(registry)[0].problems)

    key = log._key(1)
    stored = json.loads(log.store.get_bytes(key))
    stored["actor"]["name"] = "someone else"
    log.store.put_bytes(key, json.dumps(stored).encode())
    assert any("record 1 was edited" in p for p in verify_registry(registry)[0].problems)
    log.store.delete(log._key(2))
    problems = verify_registry(registry)[0].problems
    assert any(
        "record 2 is missing (the log jumps from 2 to 3)" in p or "record 2 is missing" in p for p in problems
    )


def test_history_helpers(registry: Registry) -> None:
    records = [
        {"seq": 1, "action": "promote", "from": None, "to": "1"},
        {"seq": 2, "action": "promote", "from": "1", "to": "2", "fingerprint": "fp2"},
        {"seq": 3, "action": "rollback", "from": "2", "to": "1", "fingerprint_from": "fp2", "reason": "bad"},
    ]
    assert previous_champion(records, "2") == "1" and previous_champion(records, "1") is None
    assert rolled_back(records, "fp2")["seq"] == 3  # type: ignore[index]
    assert rolled_back(records, "other", "2")["seq"] == 3, "the rolled-back version itself"  # type: ignore[index]
    assert rolled_back(records, "fp9") is None
    forced = [
        *records,
        {"seq": 4, "action": "promote", "from": "1", "to": "4", "forced": True, "fingerprint": "fp2"},
    ]
    assert rolled_back(forced, "fp2") is None, "a forced promotion of the same model lifts the bar"


RACE = textwrap.dedent("""
    import sys, time, pathlib
    from pipelines.config import Settings
    from pipelines.errors import RegistryConflict
    from pipelines.registry import Move, Registry
    project, target, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
    reg = Registry(Settings(project_dir=project, actor=f"host-{target}"), "flight-delay")
    reg.aliases()  # connected and warm before the barrier
    pathlib.Path(f"{go}.ready.{target}").touch()
    while not go.exists():
        time.sleep(0.002)
    try:
        reg.move(Move("promote", target, "1", "race"))
    except RegistryConflict as exc:
        print(exc, file=sys.stderr)
        sys.exit(3)
""")


def test_two_project_folders_racing_for_one_registry_never_both_win(
    registry: Registry, tmp_path: Path
) -> None:
    """Two processes in two project folders, one shared SQLite registry (as two checkouts of
    a team sharing one MLflow store): the lock and the audit log live beside the registry,
    not in each folder, so exactly one promotion wins each trial (I3) and the loser exits 3."""
    import os

    promote(registry, "1", None)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.settings.mlflow_uri}
    for trial in range(3):
        go = tmp_path / f"go{trial}"
        folders = [tmp_path / f"host{i}" for i in (2, 3)]
        procs = [subprocess.Popen([sys.executable, "-c", RACE, str(folder), folder.name[-1], str(go)], env=env,
                                  stderr=subprocess.PIPE, text=True) for folder in folders]  # fmt: skip
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob(f"go{trial}.ready.*"))) < 2:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        go.touch()
        results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
        assert sorted(code for code, _ in results) == [0, 3], results
        assert "not v1 as expected" in next(err for code, err in results if code == 3)
        check, records = verify_registry(registry)
        assert check.ok, check.problems
        assert [r["action"] for r in records[-2:]] == ["promote", "conflict"]
        registry.move(Move("rollback", "1", registry.aliases()[CHAMPION], "reset for the next trial"))
    assert not (tmp_path / "host2" / ".mlops").exists(), "nothing of the registry's state in a project folder"
