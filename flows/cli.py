"""The `loom` command: declarative ML pipelines over one dvc.yaml DAG."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Any


def _cmd_stage(args: argparse.Namespace) -> int:
    from flows import stage_runner

    return stage_runner.main(args.name)


def _cmd_run(args: argparse.Namespace) -> int:
    from flows import interrupts, project, workspace

    root = project.find_root()
    try:
        with interrupts.handled(), workspace.locked(root, args.command_line, wait=args.wait):
            return _run_locked(root, args)
    except BaseException as stop:
        if not _is_interrupt(stop):
            raise
        print(
            f"loom run: interrupted by {interrupts.signal_name(stop)}: running stages stopped, "
            "their MLflow runs and the pipeline run marked KILLED; last good outputs kept",
            file=sys.stderr,
        )
        return interrupts.exit_code(stop)


def _is_interrupt(err: BaseException) -> bool:
    if isinstance(err, KeyboardInterrupt):
        return True
    from prefect.exceptions import TerminationSignal  # Prefect's SIGTERM inside a flow

    return isinstance(err, TerminationSignal)


def _run_locked(root: Path, args: argparse.Namespace) -> int:
    from flows import plan, prefect_server, tracking

    # Validated and written before any Prefect server starts; params.yaml is untouched
    # unless the whole pipeline accepts the result.
    plan.apply_params(root, [str(f) for f in args.params_file], args.set_param)
    if not args.force:
        # Nothing changed: nothing to orchestrate. Report like `dvc repro` does, without
        # starting Prefect (a flow run) or MLflow (a pipeline run).
        specs = plan.select_specs(root, args.stages)
        if not plan.stages_to_run(root, specs, force=False):
            print(plan.format_summary([plan.skipped(root, s) for s in specs]))
            print(f"\nEverything is up to date: {len(specs)} stage(s) unchanged (DVC).")
            return 0
    # MLflow takes ~1.3 s to import; let that overlap with Prefect and DVC start-up.
    threading.Thread(target=importlib.import_module, args=("mlflow",), daemon=True).start()
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows import pipeline

    # Prefect types task_runner as TaskRunner[PrefectFuture[Any]], invariant: no
    # ThreadPoolTaskRunner[R] fits it (Prefect casts its own default runner alike).
    flow = pipeline.pipeline.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=args.jobs)  # type: ignore[arg-type]
    )
    with prefect_server.api():  # stopped last, after the flow recorded how it ended
        try:
            reports = flow(targets=args.stages, force=args.force, root=str(root))
        except Exception as err:  # the flow already logged details; end with the reason
            print(f"loom run: error: {err}", file=sys.stderr)
            return 1
    ran = sum(r["status"] == "ran" for r in reports)
    print(f"\n{ran} stage(s) ran, {len(reports) - ran} skipped.")
    print(f"Open the MLflow UI: {ui_command(root, tracking.tracking_uri(root))}")
    return 0


def ui_command(root: Path, uri: str) -> str:
    from flows import tracking

    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {tracking.redact(uri)}"  # printed: never show a password from the URI


def _cmd_check(args: argparse.Namespace) -> int:
    from flows import check, project

    found = check.problems(project.find_root())
    for line in found:
        print(f"loom check: {line}", file=sys.stderr)
    if not found:
        print("loom check: dvc.yaml, params.yaml and component imports agree")
    return 1 if found else 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from flows import compare, project, tracking

    try:
        runs = compare.recent_runs(project.find_root(), args.last, args.stage)
    except (compare.CompareError, tracking.TrackingError) as err:
        print(f"loom runs: error: {err}", file=sys.stderr)
        return 1
    print(compare.format_runs(runs))
    return 0


def _positive_int(text: str) -> int:
    """argparse type for counts such as --last: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _cmd_compare(args: argparse.Namespace) -> int:
    from flows import compare, project, tracking

    root = project.find_root()
    if args.sweep:
        return compare_sweep(args)
    try:
        if args.run_ids:
            runs = compare.get_runs(root, args.run_ids)
        else:
            runs = compare.recent_runs(root, args.last or 2, args.stage)
    except (compare.CompareError, tracking.TrackingError) as err:
        print(f"loom compare: error: {err}", file=sys.stderr)
        return 1
    if len(runs) < 2:
        print(
            "loom compare: error: need at least two runs (give RUN_IDs or --last N)",
            file=sys.stderr,
        )
        return 1
    print(compare.format_compare(runs))
    return 0


def compare_sweep(args: argparse.Namespace) -> int:
    """`loom compare --sweep ID [--metric NAME] [--desc]`."""
    from flows import compare, project, tracking

    points = compare.collect(project.find_root(), args.sweep)
    if not points:
        print(
            f"loom compare: error: no MLflow runs tagged {tracking.SWEEP_ID_TAG}={args.sweep}",
            file=sys.stderr,
        )
        return 1
    print(compare.format_points(args.sweep, points, args.metric, getattr(args, "desc", False)))
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from flows import deploy, project

    try:
        return deploy.deploy(project.find_root(), args.names or None)
    except deploy.DeployError as err:
        print(f"loom deploy: error: {err}", file=sys.stderr)
        return 1


def _cmd_pull(args: argparse.Namespace) -> int:
    from flows import project, pull

    try:
        run_id, files = pull.pull_run(project.find_root(), args.run, args.stages)
    except pull.PullError as err:
        print(f"loom pull: error: {err}", file=sys.stderr)
        return 1
    print(f"loom pull: outputs of pipeline run {run_id}: {files} file(s) fetched")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from flows import project, tracking

    root = project.find_root()
    print(ui_command(root, tracking.tracking_uri(root)))
    print("prefect server start --host 127.0.0.1  # then open http://127.0.0.1:4200")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loom", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stage", help="run one dvc.yaml stage (what each stage's cmd calls)")
    s.add_argument("name", help="stage name as in dvc.yaml, e.g. bpe@small")
    s.set_defaults(func=_cmd_stage)

    r = sub.add_parser("run", help="run the pipeline as a Prefect flow over the dvc.yaml DAG")
    r.add_argument("stages", nargs="*", help="stages or stage groups to run (with their upstream)")
    r.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a params.yaml value before running (like `dvc exp run -S`)",
    )
    r.add_argument(
        "-P",
        "--params-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="merge a params overlay (e.g. params.gpu.yaml) first",
    )
    r.add_argument("--force", action="store_true", help="re-run selected stages even if unchanged")
    r.add_argument("--jobs", "-j", type=int, default=1, help="stages to run concurrently")
    r.add_argument(
        "--wait",
        action="store_true",
        help="if another Loom run holds this workspace, wait for it (default: fail at once)",
    )
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser(
        "check", help="verify dvc.yaml deps cover every module each component imports"
    )
    c.set_defaults(func=_cmd_check)

    rs = sub.add_parser("runs", help="list recent stage runs from MLflow")
    rs.add_argument("--last", type=_positive_int, default=20, metavar="N")
    rs.add_argument("--stage")
    rs.set_defaults(func=_cmd_runs)

    cp = sub.add_parser("compare", help="side-by-side params, metrics and data versions of runs")
    cp.add_argument("run_ids", nargs="*")
    cp.add_argument("--last", type=_positive_int, metavar="N")
    cp.add_argument("--stage")
    cp.add_argument("--sweep", metavar="ID", help="the grid of a sweep, sorted by --metric")
    cp.add_argument("--metric", help="with --sweep: the metric to sort by")
    cp.set_defaults(func=_cmd_compare)

    d = sub.add_parser("deploy", help="check server and pools, then deploy prefect.yaml")
    d.add_argument("names", nargs="*", help="deployments to deploy (default: all)")
    d.set_defaults(func=_cmd_deploy)

    pl = sub.add_parser("pull", help="fetch the outputs of a pipeline run (default: newest pushed)")
    pl.add_argument("stages", nargs="*", help="only these stages' outputs")
    pl.add_argument("--run", help="MLflow id of the pipeline (parent) run")
    pl.set_defaults(func=_cmd_pull)

    register_services(sub)
    register_sweep(sub)

    u = sub.add_parser("ui", help="print the commands that open the MLflow and Prefect UIs")
    u.set_defaults(func=_cmd_ui)
    return p


# ---- loom sweep ----------------------------------------------------------------------------


def register_sweep(subparsers: Any) -> None:
    """Add `loom sweep` to the `loom` parser's subcommands."""
    s = subparsers.add_parser(
        "sweep",
        help="run the pipeline once per point of a params grid, each in its own workspace",
        description=(
            "Run the pipeline once per point of the cartesian product of the -S value lists, "
            "from the committed HEAD plus each point's values; then print the grid's results."
        ),
    )
    s.add_argument("stages", nargs="*", help="stages or stage groups to run (with their upstream)")
    s.add_argument(
        "-S",
        "--set-param",
        dest="grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values to sweep a params.yaml key over (repeat for more keys: their product)",
    )
    s.add_argument(
        "-j", "--max-parallel", type=int, default=2, help="points to run at once (default 2)"
    )
    s.add_argument(
        "--pool",
        metavar="DEPLOYMENT",
        help="run each point as a flow run of this deployment (e.g. loom-pipeline/text-nightly)",
    )
    s.add_argument("--metric", help="sort the results by this metric")
    s.add_argument("--desc", action="store_true", help="sort highest first")
    s.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows import project, sweep
    from flows.params import ParamsError

    if not args.grid:
        print("loom sweep: error: give at least one -S KEY=V1,V2,...", file=sys.stderr)
        return 2
    if args.max_parallel < 1:
        print("loom sweep: error: --max-parallel must be >= 1", file=sys.stderr)
        return 2
    flow = sweep.sweep.with_options(task_runner=ThreadPoolTaskRunner(max_workers=args.max_parallel))
    try:
        result = flow(
            grid_specs=args.grid,
            targets=args.stages or None,
            root=str(project.find_root()),
            max_parallel=args.max_parallel,
            pool_deployment=args.pool,
            metric=args.metric,
            descending=args.desc,
        )
    except (ParamsError, project.ProjectError):
        raise  # `loom` reports these itself
    except Exception as err:
        print(f"loom sweep: error: {err}", file=sys.stderr)
        return 1
    points = result["points"]
    failed = [p for p in points if p["status"] != "succeeded"]
    for p in failed:
        overrides = json.dumps(p["overrides"], default=str)
        print(f"loom sweep: point {p['index']} {overrides} failed: {p['error']}", file=sys.stderr)
    metric = f" --metric {args.metric}" if args.metric else ""
    print(
        f"\n{len(points) - len(failed)} of {len(points)} point(s) succeeded. "
        f"Again: loom compare --sweep {result['sweep_id']}{metric}"
    )
    return 1 if failed else 0


# ---- loom services -------------------------------------------------------------------------

SERVICES_NOT_HEALTHY = 3  # `loom services status`: some recorded service is not healthy


def register_services(subparsers: Any) -> None:
    """Add `services up|down|status` to the `loom` command's subparsers."""
    from flows import services

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        help="pid files, logs, databases (default: $LOOM_STATE_DIR or <project>/.loom/services)",
    )
    p = subparsers.add_parser(
        "services",
        help="start/stop local Prefect and MLflow servers and Prefect workers",
        description=(services.__doc__ or "").split("\n\n")[0],
        epilog='`up` prints only `export NAME=URL` lines on stdout: eval "$(loom services up)". '
        f"`status` exits 0 when every recorded service is healthy, {SERVICES_NOT_HEALTHY} "
        "otherwise (also when none is recorded).",
    )
    sub = p.add_subparsers(dest="action", required=True)

    u = sub.add_parser(
        "up",
        parents=[common],
        help="start what is not running; print the env exports for clients",
    )
    u.add_argument(
        "--host", default=services.DEFAULT_HOST, help="interface to bind (default %(default)s)"
    )
    u.add_argument("--prefect-port", type=int, help="default: $LOOM_PREFECT_PORT or 4200")
    u.add_argument("--mlflow-port", type=int, help="default: $LOOM_MLFLOW_PORT or 5000")
    u.add_argument(
        "--workers",
        action="append",
        default=[],
        metavar="POOL",
        help="start a process worker on POOL, e.g. cpu (repeatable); it sees no GPU",
    )
    u.add_argument(
        "--gpu-slots",
        type=int,
        default=0,
        metavar="N",
        help="N workers on pool gpu; worker i sees only GPU i and runs one flow run at a time",
    )
    u.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for health")
    u.set_defaults(func=_cmd_services)

    d = sub.add_parser("down", parents=[common], help="stop every service `up` started")
    d.add_argument("--grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    d.set_defaults(func=_cmd_services)

    s = sub.add_parser(
        "status",
        parents=[common],
        help=f"table of services; exit 0 if all are healthy, {SERVICES_NOT_HEALTHY} otherwise",
    )
    s.set_defaults(func=_cmd_services)


def _cmd_services(args: argparse.Namespace) -> int:
    from flows import services

    action = {"up": _services_up, "down": _services_down, "status": _services_status}
    try:
        return action[args.action](args, args.state_dir or services.default_state_dir())
    except services.ServicesError as err:
        print(f"loom services {args.action}: error: {err}", file=sys.stderr)
        return 1


def _say(msg: str) -> None:
    print(f"loom services: {msg}", file=sys.stderr)


def _port(value: int | None, env: str, default: int) -> int:
    from flows.services import ServicesError

    raw = value if value is not None else os.environ.get(env, default)
    try:
        port = int(raw)
    except ValueError:
        raise ServicesError(f"{env}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ServicesError(f"port {port} is out of range 1-65535")
    return port


def _services_up(args: argparse.Namespace, state_dir: Path) -> int:
    from flows import services

    result = services.up(
        state_dir,
        host=args.host,
        prefect_port=_port(args.prefect_port, "LOOM_PREFECT_PORT", services.DEFAULT_PREFECT_PORT),
        mlflow_port=_port(args.mlflow_port, "LOOM_MLFLOW_PORT", services.DEFAULT_MLFLOW_PORT),
        workers=[p for arg in args.workers for p in arg.split(",") if p],
        gpu_slots=args.gpu_slots,
        timeout=args.timeout,
        progress=_say,
    )
    print(services.format_status(services.status(state_dir)), file=sys.stderr)
    # Only the exports on stdout: `eval "$(loom services up)"` sets them in a shell.
    for key, value in result["env"].items():
        print(f"export {key}={value}")
    return 0


def _services_down(args: argparse.Namespace, state_dir: Path) -> int:
    from flows import services

    stopped = services.down(state_dir, grace=args.grace)
    _say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _services_status(args: argparse.Namespace, state_dir: Path) -> int:
    from flows import services

    rows = services.status(state_dir)
    if not rows:
        _say(f"no services recorded in {state_dir.resolve()} (start them: loom services up)")
        return SERVICES_NOT_HEALTHY
    print(services.format_status(rows))
    return 0 if all(r.state == "running" for r in rows) else SERVICES_NOT_HEALTHY


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.command_line = shlex.join(["loom", *(sys.argv[1:] if argv is None else argv)])
    if getattr(args, "jobs", 1) < 1:
        print("loom run: error: --jobs must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    from flows.params import ParamsError
    from flows.project import ProjectError, find_root

    try:
        # Import components from the project being run (a checkout, a worktree, a temp copy),
        # not from wherever Loom happens to be installed.
        root = find_root()
        if (root / "components").is_dir():
            sys.path.insert(0, str(root))
    except ProjectError:
        pass
    from components.config import ConfigError
    from components.registry import UnknownComponentError

    try:
        return args.func(args)
    except (ParamsError, ProjectError, ConfigError, UnknownComponentError) as err:
        print(f"loom {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
