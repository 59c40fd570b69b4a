"""The ``mlops`` command: one sub-command per step.

    mlops <step> [--date YYYY-MM-DD | --dates FIRST:LAST] [--set section.key=value ...]

Exit codes are a contract shared by DVC, Airflow's operators and the container image:
``0`` done; ``99`` done and downstream should be skipped (a gate refused a challenger);
``2`` bad usage or configuration; ``3`` the registry moved under us (compare-and-set);
``1`` any other failure. Failures print one line on stderr that names what is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any

EXIT_SKIPPED = 99


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlops-flights")
    except PackageNotFoundError:
        return "unknown"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"mlops {_version()}")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, help_: str, dated: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a params.yaml value for this run (repeatable)")  # fmt: skip
        if dated:
            p.add_argument("--date", help="the batch date, YYYY-MM-DD (FIRST:LAST: a range, as --dates)")
            p.add_argument("--dates", help="an inclusive range FIRST:LAST (a backfill in one process)")
        return p

    step("ingest", "land a day's flights (joined with weather) as a batch file; --date next: the replay "
         "clock's next day", dated=True)  # fmt: skip
    step("validate", "validate landed batches; passing ones join the DVC-tracked data", dated=True)
    step("score", "score a validated day's flights with the champion (prediction log); a range: "
         "each day", dated=True)  # fmt: skip
    step("monitor", "drift (Evidently) and live performance of the champion for a day; a range: each "
         "day", dated=True)  # fmt: skip
    rt = step("retrain", "dvc repro the training core on a locked snapshot, with --set overrides")
    rt.add_argument("--stage", choices=["featurize", "train", "evaluate"],
                    help="one DVC stage only (the retrain DAG runs one task per stage); evaluate exits 99 "
                    "when the gate refuses (unless the promotion is forced)")  # fmt: skip
    rg = step("register", "register an evaluated model as the challenger and record the gate's verdict")
    rg.add_argument(
        "--run", dest="run_id", required=True, help="the MLflow run whose model and gate report to take"
    )
    step("featurize", "select the training window and build features (DVC stage)")
    step("train", "fit the model on the window and log it to MLflow (DVC stage)")
    ev = step("evaluate", "gate the trained model: floors, champion on the same holdout, slices")
    ev.add_argument("--refusal-exit-code", type=int, default=EXIT_SKIPPED,
                    help="exit code when the gate refuses (dvc.yaml uses 0: a refusal is a result)")  # fmt: skip
    pr = step("promote", "register the model as challenger; move champion if the gate blessed it")
    pr.add_argument("--force", action="store_true", help="promote even if refused (needs --reason)")
    pr.add_argument("--reason", help="why (recorded in the audit trail)")
    pr.add_argument("--expect", help="with --force: the champion you are replacing (default: the one the "
                    "gate compared against); refused (exit 3) if it moved")  # fmt: skip
    pr.add_argument("--run", dest="run_id", help="promote this MLflow run's evaluated model (its gate/ artifacts) "
                    "instead of the workspace's reports/")  # fmt: skip
    rb = step("rollback", "move champion back to the previous (or a given) version, audited")
    rb.add_argument("--expect", help="the champion you are replacing, as `mlops status` shows it (required)")
    rb.add_argument("--to", dest="target", help="'previous' (default) or a version number")
    rb.add_argument("--reason", help="why (required; recorded in the audit trail)")
    cn = step("canary", "the canary: decide from its live traffic (the deploy loop), or promote it to "
              "champion or roll it back by hand, audited", dated=True)  # fmt: skip
    cn.add_argument("action", choices=["decide", "promote", "rollback"], help="decide: the deploy loop's decision "
                    "for --date (or each day of --dates); promote: it becomes the champion; rollback: it is taken off "
                    "and barred")  # fmt: skip
    cn.add_argument("--reason", help="why (required; recorded in the audit trail)")
    cn.add_argument(
        "--expect", help="the canary you are acting on, as `mlops status` shows it (refused if it changed)"
    )
    au = step("audit", "the registry's audit log: verify it (chain, MLflow mirror, alias) or list it")
    au.add_argument(
        "action", choices=["verify", "log"], help="verify: exit 1 on any problem; log: the records"
    )
    au.add_argument("--json", action="store_true", help="machine-readable output")
    au.add_argument("--last", type=int, default=0, help="log: only the last N records")
    sv = step("serve", "the champion behind a REST API (predict, health, ready, metrics), hot reload")
    sv.add_argument("--host", default=os.environ.get("MLOPS_SERVE_HOST", "127.0.0.1"))
    sv.add_argument("--port", type=int, default=int(os.environ.get("MLOPS_SERVE_PORT", "8000")))
    st = step("status", "registry state, validated data window and the last gate verdict")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


# No tool this command runs reports usage home, unless the caller's environment says
# otherwise: GX's analytics and MLflow's telemetry (DVC's analytics: pipelines.versioning.run_dvc,
# which every `dvc` the steps run goes through). The step image and the Makefile set the same.
QUIET = {"GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def quiet_tools() -> None:
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s step={args.step} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "urllib3", "git", "mlflow.store.db.utils", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_tools()

    from pipelines.config import ConfigError, Settings, load_params
    from pipelines.errors import Skipped, StepError

    settings = None
    try:
        settings = Settings()
        overrides = list(args.overrides)
        # Airflow passes a manual trigger's Params as JSON (no shell quoting involved)
        for key, value in json.loads(os.environ.get("MLOPS_SET") or "{}").items():
            overrides.append(f"{key}={json.dumps(value)}")
        if args.step == "promote":
            if args.force:
                overrides.append("promote.force=true")
            if args.reason is not None:
                overrides.append(f"promote.reason={json.dumps(args.reason)}")
            if args.expect is not None:
                overrides.append(f"promote.expect={json.dumps(str(args.expect))}")
        if args.step == "canary":
            if args.expect is not None:
                overrides.append(f"canary.expect={json.dumps(str(args.expect))}")
            if args.reason is not None:
                overrides.append(f"canary.reason={json.dumps(args.reason)}")
        if args.step == "rollback":
            if args.target is not None:
                overrides.append(f"rollback.to={args.target}")
            if args.expect is not None:
                overrides.append(f"rollback.expect={json.dumps(str(args.expect))}")
            if args.reason is not None:
                overrides.append(f"rollback.reason={json.dumps(args.reason)}")
        params = load_params(settings, overrides)
        runner = _RUNNERS[args.step]
        result = runner(settings, params, args)
    except Skipped as exc:
        print(f"mlops {args.step}: skipped: {exc}", file=sys.stderr)
        return EXIT_SKIPPED
    except ConfigError as exc:
        print(f"mlops {args.step}: error: {exc}", file=sys.stderr)
        return 2
    except StepError as exc:
        print(f"mlops {args.step}: failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        from pipelines.tracking import describe_tracking_error

        line = describe_tracking_error(settings, exc)
        if line is None:
            raise
        print(f"mlops {args.step}: failed: {line}", file=sys.stderr)
        return 1
    if isinstance(result, int):
        return result
    if result is not None and args.step not in ("status", "audit"):
        line = json.dumps(_jsonable(result), default=str)
        print(line)  # the last stdout line: Airflow's Bash/Docker operators push it to XCom
        xcom_file = os.environ.get("MLOPS_XCOM_FILE")  # KubernetesPodOperator's XCom sidecar
        if xcom_file:
            os.makedirs(os.path.dirname(xcom_file) or ".", exist_ok=True)
            with open(xcom_file, "w") as handle:
                handle.write(line)
    return 0


def _days(args: argparse.Namespace) -> list[Any]:
    from pipelines.source import parse_days

    return parse_days(args.date, args.dates)


def _run_ingest(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.ingest import ingest

    if args.date == "next" and not args.dates:  # the replay clock (scheduled nightly runs)
        return ingest(settings, params, None)
    return ingest(settings, params, _days(args))


def _run_validate(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.validate import validate

    return validate(settings, params, _days(args))


def _run_score(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.score import score_days

    return score_days(settings, params, _days(args))


def _run_monitor(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.monitor import monitor_days

    return monitor_days(settings, params, _days(args))


def _run_retrain(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.errors import Skipped
    from pipelines.steps.retrain import retrain

    result = retrain(settings, params, args.stage)
    if args.stage == "evaluate" and result["verdict"] == "refused":
        line = (
            f"gate refused run {result['run_id'][:8]} against {_v(result['champion_before'])}: "
            + ", ".join(result["failed_checks"])
        )
        if params.get("promote.force"):
            print(
                f"{line}; the promotion is forced (promote.reason: {params.get('promote.reason')})",
                file=sys.stderr,
            )
        else:  # the task shows the refusal and what follows is skipped (register still runs)
            print(json.dumps(result, default=str))
            raise Skipped(f"{line}; see {result['gate_report']}")
    return result


def _v(version: str | None) -> str:
    return f"v{version}" if version else "no champion"


def _run_register(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.promote import register

    return register(settings, params, args.run_id)


def _run_featurize(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.featurize import featurize

    return featurize(settings, params)


def _run_train(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.train import train

    return train(settings, params)


def _run_evaluate(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.helper import start as start_helper
    from pipelines.steps.evaluate import evaluate

    with start_helper(settings, "evaluate") as helper:  # MLflow's import starts now, beside ours
        report = evaluate(settings, params, helper)
    print(report.summary_line())
    return 0 if report.blessed else args.refusal_exit_code


def _run_promote(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.promote import promote_if_blessed

    return promote_if_blessed(settings, params, args.run_id)


def _run_rollback(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.rollback import rollback

    return rollback(settings, params)


def _run_canary(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps import canary

    if args.action == "decide":
        from pipelines.steps.deploy import decide_days

        return decide_days(settings, params, _days(args))
    return (
        canary.graduate(settings, params) if args.action == "promote" else canary.rollback(settings, params)
    )


def _run_status(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.status import collect_status, render_status

    state = collect_status(settings, params)
    print(json.dumps(state, indent=2, default=str) if args.json else render_status(state))
    return 0


def _run_audit(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.steps.audit import audit_log, audit_verify

    if args.action == "verify":
        return audit_verify(settings, params, args.json)
    return audit_log(settings, params, args.last, args.json)


def _run_serve(settings: Any, params: Any, args: argparse.Namespace) -> Any:
    from pipelines.serving import serve

    return serve(settings, params, args.host, args.port)


_RUNNERS: dict[str, Callable[[Any, Any, argparse.Namespace], Any]] = {
    "ingest": _run_ingest,
    "validate": _run_validate,
    "score": _run_score,
    "monitor": _run_monitor,
    "retrain": _run_retrain,
    "featurize": _run_featurize,
    "train": _run_train,
    "evaluate": _run_evaluate,
    "promote": _run_promote,
    "register": _run_register,
    "rollback": _run_rollback,
    "canary": _run_canary,
    "status": _run_status,
    "audit": _run_audit,
    "serve": _run_serve,
}


def run() -> None:
    """The ``mlops`` console script: :func:`main`, then the process ends without the
    interpreter's teardown (see :mod:`pipelines.fastexit`; ~1 s per step)."""
    from pipelines import fastexit

    fastexit.arm()
    fastexit.leave(main())


if __name__ == "__main__":  # python -m pipelines.cli (profilers): Python's usual exit
    sys.exit(main())
