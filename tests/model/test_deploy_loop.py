"""The deploy loop on real models and replayed January days: a canary answers a share of each
day's flights (`mlops score`), and `mlops canary decide` judges it on the labelled days before,
every day, through the real commands and the real registry:

- a deliberately crippled candidate (one split; forced past the gate) is rolled back at the
  first breach, within the baking period, audited with its evidence;
- a genuinely better one (trained on more than twice the champion's days) bakes three
  labelled days without a breach and is promoted through the registry protocol;
- A/B (the sequential test, in-process on the same real predictions): two identical models
  are never declared different in 20 seeds of the split; a clearly better model wins before
  the maximum duration.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from tests.code.conftest import mlops, ok
from tests.conftest import clone_workspace

pytestmark = pytest.mark.e2e

NAME = "flight-delay"
REPLAY = [dt.date(2013, 1, 11) + dt.timedelta(days=i) for i in range(6)]  # after every training window


def replay(ws: Path, days: list[dt.date]) -> list[dict[str, Any]]:
    """Each day as the nightly DAG runs it: score (the split), then decide."""
    decisions = []
    for day in days:
        ok(mlops(ws, "score", "--date", day.isoformat()))
        proc = mlops(ws, "canary", "decide", "--date", day.isoformat())
        if proc.returncode == 99:  # no canary any more
            break
        decisions.append(ok(proc))
    return decisions


def test_a_crippled_canary_is_rolled_back_at_the_first_breach(
    loop_base: tuple[Path, str, str, str], tmp_path: Path
) -> None:
    base, crippled, _, _ = loop_base  # the constant model: it cannot rank flights at all
    ws = clone_workspace(base, tmp_path / "ws")
    started = ok(mlops(ws, "promote", "--run", crippled, "--force", "--reason", "drill: a crippled model",
                       "--set", "promote.to=canary", "--set", "canary.share=0.3"))  # fmt: skip
    assert (started["canary"], started["champion"]) == ("2", "1")
    decisions = replay(ws, REPLAY)
    timeline = [
        (d["date"], d["decision"], len(d["labelled_days"]), d.get("auc_difference")) for d in decisions
    ]
    print("\ncrippled canary:", *timeline, sep="\n  ")
    assert decisions[-1]["decision"] == "rollback", timeline
    assert len(decisions[-1]["labelled_days"]) < 3, "rolled back within the baking period"
    assert all(d["decision"] == "baking" for d in decisions[:-1])
    assert "breach" in decisions[-1]["why"]
    status = json.loads(mlops(ws, "status", "--json").stdout)
    assert status["canary"] is None and status["champion"]["version"] == "1" and status["audit_check"]["ok"]
    record = json.loads(mlops(ws, "audit", "log", "--json").stdout)[-1]
    assert (record["action"], record["from"], record["to"]) == ("canary-rollback", "2", None)
    assert (
        record["evidence"]["decision"] == "rollback"
        and record["evidence"]["sides"]["canary"]["flights"] > 100
    )
    # the next day is scored by the champion alone; the decision of the day re-runs as itself
    after = decisions[-1]["date"]
    again = ok(mlops(ws, "canary", "decide", "--date", after))
    assert (again["decision"], again["changed"], again["record"]) == ("rollback", False, record["seq"])
    barred = mlops(ws, "promote", "--run", crippled, "--set", "promote.to=canary")
    assert barred.returncode == 99 and "rolled back" in barred.stderr


def test_a_better_canary_bakes_and_is_promoted(loop_base: tuple[Path, str, str, str], tmp_path: Path) -> None:
    base, _, _, better = loop_base
    ws = clone_workspace(base, tmp_path / "ws")
    ok(mlops(ws, "promote", "--run", better, "--set", "promote.to=canary", "--set", "canary.share=0.3"))
    decisions = replay(ws, REPLAY)
    timeline = [
        (d["date"], d["decision"], len(d["labelled_days"]), d.get("auc_difference")) for d in decisions
    ]
    print("\nbetter canary:", *timeline, sep="\n  ")
    assert [d["decision"] for d in decisions] == ["baking", "baking", "baking", "promote"], timeline
    promoted = decisions[-1]
    assert promoted["labelled_days"] == ["2013-01-11", "2013-01-12", "2013-01-13"]
    status = json.loads(mlops(ws, "status", "--json").stdout)
    assert status["champion"]["version"] == "2" and status["canary"] is None and status["audit_check"]["ok"]
    record = json.loads(mlops(ws, "audit", "log", "--json").stdout)[-1]
    assert (record["action"], record["from"], record["to"], record["canary"]) == ("promote", "1", "2", "2")
    assert record["evidence"]["decision"] == "promote" and record["infra"]["ok"]
    assert (ws / "reports/deploy/2013-01-14.json").exists()


def test_ab_sequential_test_no_false_winner_and_stops_early_on_a_clear_one(
    loop_base: tuple[Path, str, str, str],
) -> None:
    """The A/B decision rule on real predictions of real models, replayed day by day with the
    split of 20 seeds: identical models (the champion against itself) never produce a winner
    in 14 days; a clearly better model (the better run against the crippled one) wins early.
    Paired, as `score` logs it: the champion's answer of each canary flight is known."""
    import mlflow
    import numpy as np
    import pandas as pd

    from pipelines.config import Settings, load_params
    from pipelines.features import build_features, build_target
    from pipelines.serving.split import frame_keys, to_canary
    from pipelines.steps.deploy import compare, decide_rule

    base, _, crippled, better = loop_base
    settings = Settings(project_dir=base)
    cfg = {**load_params(settings).section("canary"), "mode": "ab", "share": 0.5}
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)

    def model(run: str) -> Any:
        trained = json.loads(
            Path(mlflow.artifacts.download_artifacts(f"runs:/{run}/gate/train.json")).read_text()
        )
        return mlflow.sklearn.load_model(trained["model_uri"])

    good, worse = model(better), model(crippled)
    days = [dt.date(2013, 1, 11) + dt.timedelta(days=i) for i in range(int(cfg["max_days"]))]
    per_day = []
    for day in days:
        batch = pd.read_parquet(base / f"data/validated/{day}.parquet")
        features = build_features(batch)
        per_day.append({"keys": frame_keys(batch), "y": build_target(batch, 15).to_numpy(dtype=float),
                        "good": good.predict_proba(features)[:, 1], "bad": worse.predict_proba(features)[:, 1],
                        "date": day.isoformat()})  # fmt: skip

    def run(seed: int, champion_key: str, canary_key: str) -> tuple[str, int]:
        frames, labelled = [], []
        for index, day in enumerate(per_day):
            canary = np.array(to_canary(day["keys"], 0.5, f"seed-{seed}"))
            frames.append(pd.DataFrame({
                "role": np.where(canary, "canary", "champion"), "model_version": "x",
                "prediction": np.where(canary, day[canary_key], day[champion_key]),
                "champion_prediction": day[champion_key], "y": day["y"],
                "batch_date": day["date"],
            }))  # fmt: skip
            labelled.append(day["date"])
            found = compare(pd.concat(frames, ignore_index=True), 100, seed, 0.95)
            decision, _ = decide_rule(cfg, 0.5, labelled, found)
            if decision != "baking":
                return decision, index + 1
        return "baking", len(per_day)

    identical = [run(seed, "good", "good") for seed in range(20)]
    print("\nidentical models:", identical)
    winners = [d for d, _ in identical if d == "promote"]
    assert not winners, f"a winner declared between identical models: {identical}"
    assert all(d == "rollback" and n == len(days) for d, n in identical), (
        "no winner: the champion stays at the end"
    )
    clear = [run(seed, "bad", "good") for seed in range(5)]
    print("clearly better canary:", clear)
    assert all(d == "promote" and n < len(days) for d, n in clear), clear
