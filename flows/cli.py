"""The `loom` command: declarative ML pipelines over one dvc.yaml DAG."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import threading
from pathlib import Path


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

    flow = pipeline.pipeline.with_options(task_runner=ThreadPoolTaskRunner(max_workers=args.jobs))
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
        from flows import sweep

        return sweep.sweep_compare(args)
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

    from flows import services, sweep

    services.register(sub)
    sweep.register(sub)

    u = sub.add_parser("ui", help="print the commands that open the MLflow and Prefect UIs")
    u.set_defaults(func=_cmd_ui)
    return p


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
