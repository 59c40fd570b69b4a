"""Code tests of the registry seam on a real MLflow SQLite store: compare-and-set moves,
concurrent promotions, rollback rules and the audit trail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.config import Settings
from pipelines.errors import RegistryConflict, StepError
from pipelines.registry import CHALLENGER, CHAMPION, Registry

NAME = "flight-delay"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A registry with three registered versions of a tiny real sklearn model."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    settings = Settings(project_dir=tmp_path, actor="tester")
    reg = Registry(settings, NAME)
    X, y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])
    for i in range(3):
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(LogisticRegression(C=1.0 + i).fit(X, y), name="model",
                                            pip_requirements=["scikit-learn"])  # fmt: skip
        reg.register(info.model_uri, run.info.run_id, tags={"mlops.data_version": f"d{i}"})
    return reg


def test_register_is_idempotent_per_run_and_sets_challenger(registry: Registry) -> None:
    v3 = registry.alias(CHALLENGER)
    assert v3 is not None and v3.version == "3" and v3.tags["mlops.data_version"] == "d2"
    again = registry.register(v3.source, v3.run_id, tags={"mlops.gate_verdict": "blessed"})
    assert again.version == "3" and registry.get("4") is None
    assert registry.get("3").tags["mlops.gate_verdict"] == "blessed"  # type: ignore[union-attr]


def test_champion_moves_only_from_the_expected_version(registry: Registry) -> None:
    gate = {"verdict": "blessed", "report_uri": "runs:/x/gate/gate.json"}
    assert registry.move_champion("1", None, "first", forced=False, gate=gate) is None
    with pytest.raises(RegistryConflict, match=r"compared against no champion, the registry now has v1"):
        registry.move_champion("2", None, "stale gate", forced=False, gate=gate)
    assert registry.alias(CHAMPION).version == "1"  # type: ignore[union-attr]
    registry.move_champion("2", "1", "better", forced=False, gate=gate)
    v2 = registry.alias(CHAMPION)
    assert v2 is not None and v2.version == "2"
    assert v2.tags["mlops.previous_champion"] == "1" and v2.tags["mlops.promoted_by"] == "tester"
    assert v2.tags["mlops.promotion_reason"] == "better" and v2.tags["mlops.gate_report"].startswith("runs:/")


def test_rollback_rules_and_audit(registry: Registry) -> None:
    gate = {"verdict": "blessed"}
    with pytest.raises(StepError, match="no champion to roll back"):
        registry.rollback("previous", "why")
    registry.move_champion("1", None, "first", forced=False, gate=gate)
    with pytest.raises(StepError, match="no previous champion"):
        registry.rollback("previous", "why")
    registry.move_champion("3", "1", "third", forced=False, gate=gate)
    with pytest.raises(StepError, match="needs a reason"):
        registry.rollback("previous", "  ")
    with pytest.raises(StepError, match="no version '9'"):
        registry.rollback("9", "typo")
    registry.rollback("2", "pin the second")
    assert registry.alias(CHAMPION).version == "2"  # type: ignore[union-attr]
    assert registry.get("3").tags["mlops.rolled_back_reason"] == "pin the second"  # type: ignore[union-attr]
    trail = registry.audit_trail()
    assert [e["action"] for e in trail] == ["register"] * 3 + ["promote", "promote", "rollback"]
    assert trail[-1] == {
        **trail[-1],
        "version": "2",
        "previous": "3",
        "reason": "pin the second",
        "by": "tester",
    }


def test_two_concurrent_promotions_never_both_win(registry: Registry, tmp_path: Path) -> None:
    """Two processes, each holding a gate report evaluated against 'no champion', race to
    promote different versions: exactly one wins, the other is refused by compare-and-set."""
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import sys, time, pathlib
        from pipelines.config import Settings
        from pipelines.errors import RegistryConflict
        from pipelines.registry import Registry
        reg = Registry(Settings(project_dir={str(tmp_path)!r}), {NAME!r})
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.005)
        try:
            reg.move_champion(sys.argv[1], None, "race", forced=False, gate={{"verdict": "blessed"}})
        except RegistryConflict as exc:
            print(exc, file=sys.stderr)
            sys.exit(3)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, v], stderr=subprocess.PIPE, text=True)
        for v in ("1", "2")
    ]
    time.sleep(6)  # both processes have imported MLflow and wait at the barrier
    go.touch()
    codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes == [0, 3]
    champion = registry.alias(CHAMPION)
    assert champion is not None and champion.version in ("1", "2")
    assert [e["action"] for e in registry.audit_trail()].count("promote") == 1
