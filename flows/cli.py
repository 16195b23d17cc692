"""The `loom` command: declarative ML pipelines over one dvc.yaml DAG."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, NoReturn


def _cmd_stage(args: argparse.Namespace) -> int:
    from flows import stage_runner

    return stage_runner.main(args.name)


def _cmd_run(args: argparse.Namespace) -> int:
    from flows import interrupts, project, workspace

    root = project.find_root()
    # What params.yaml alone can judge, before waiting on the workspace lock or starting
    # anything: a typo in -S or -P fails at once, in one line (the values' types and ranges
    # are checked against the whole pipeline under the lock, still before any server starts).
    args.params_file = _check_params_args(root, args.params_file, args.set_param)
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
    # Prefect's SIGTERM inside a flow. Not imported here (3 s): an error raised before
    # Prefect was loaded, e.g. a rejected -S value, cannot be one of its signals.
    prefect_exceptions = sys.modules.get("prefect.exceptions")
    if prefect_exceptions is None:
        return False
    return isinstance(err, prefect_exceptions.TerminationSignal)


def _check_params_args(root: Path, params_files: list[Path], overrides: list[str]) -> list[Path]:
    """`-P` overlays and `-S` overrides checked against params.yaml as it is (each overlay
    read, every key present, sections kept sections); nothing is written. Returns the overlays
    as absolute paths: a path is typed relative to the working directory, which need not be
    the project root that `plan.apply_params` resolves relative paths against."""
    from flows import params

    overlays = [Path(f).resolve() for f in params_files]
    for typed in params_files:
        params.overlay_overrides(root, typed)  # the error names the path as typed
    params.check_overrides(root, overrides)
    return overlays


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def share_cores(jobs: int, env: MutableMapping[str, str], cores: int | None = None) -> None:
    """With `jobs` stages at once, each stage's torch gets cores // jobs threads (at least 1):
    two stages of 2 threads each on 2 cores spin against each other and run slower together
    than one after the other. A thread count already set in the environment is kept."""
    if jobs <= 1 or any(v in env for v in THREAD_VARIABLES):
        return
    threads = str(max(1, (cores or os.cpu_count() or 1) // jobs))
    for variable in THREAD_VARIABLES:
        env[variable] = threads


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
    share_cores(args.jobs, os.environ)
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
    if args.json:
        _print_json([compare.run_record(r) for r in runs])
    elif not runs:
        print("no stage runs recorded yet")
    else:
        compare.show([compare.runs_table(runs)])
    return 0


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _positive_int(text: str) -> int:
    """argparse type for counts such as --last: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _override(text: str) -> str:
    """argparse type for `run -S`: KEY=VALUE with a value that parses as YAML (a malformed
    one is a usage error, exit 2, before anything is read); the text itself is kept."""
    from flows.params import ParamsError, parse_override

    try:
        parse_override(text)
    except ParamsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _cmd_compare(args: argparse.Namespace) -> int:
    from flows import compare, project, tracking

    if args.sweep:
        return compare_sweep(args)
    if args.run_ids and (args.last or args.stage):
        print(
            "loom compare: error: give RUN_IDs or --last/--stage, not both (see: loom compare "
            "--help)",
            file=sys.stderr,
        )
        return 2
    root = project.find_root()
    last = args.last or 2
    try:
        if args.run_ids:
            groups = [compare.named(compare.get_runs(root, args.run_ids))]
        else:
            groups = compare.by_stage(compare.recent_runs(root, last, args.stage))
    except (compare.CompareError, tracking.TrackingError) as err:
        print(f"loom compare: error: {err}", file=sys.stderr)
        return 1
    found = sum(len(g.runs) for g in groups)
    if found < 2:
        print(
            f"loom compare: error: need at least two runs, found {found} (give RUN_IDs or "
            "--last N)",
            file=sys.stderr,
        )
        return 1
    if all(len(g.runs) < 2 for g in groups):
        stages = ", ".join(str(g.stage) for g in groups)
        print(
            f"loom compare: error: the last {last} stage runs are of {len(groups)} different "
            f"stages ({stages}): nothing to compare; give --stage NAME, a larger --last, or "
            "RUN_IDs",
            file=sys.stderr,
        )
        return 1
    if args.json:
        _print_json([compare.comparison_record(g) for g in groups])
    else:
        compare.show(compare.compare_view(groups, args.diff))
    return 0


def compare_sweep(args: argparse.Namespace) -> int:
    """`loom compare --sweep ID [--metric NAME] [--desc] [--json]`."""
    import dataclasses

    from flows import compare, project, tracking

    points = compare.collect(project.find_root(), args.sweep)
    if not points:
        print(
            f"loom compare: error: no MLflow runs tagged {tracking.SWEEP_ID_TAG}={args.sweep}",
            file=sys.stderr,
        )
        return 1
    if getattr(args, "json", False):
        _print_json([{**dataclasses.asdict(p), "ran": sorted(p.ran)} for p in points])
        return 0
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


def _cmd_detect(args: argparse.Namespace) -> int:
    from flows import detect, tracking

    try:
        found = detect.detect(args.images, args.out, args.run, args.model, args.threshold)
    except (detect.DetectError, tracking.TrackingError) as err:
        print(f"loom detect: error: {err}", file=sys.stderr)
        return 1
    for path, rows in zip(args.images, found, strict=True):
        listed = ", ".join(f"{r['label']} {r['score']:.2f}" for r in rows) or "nothing"
        print(f"{path}: {len(rows)} object(s): {listed}")
    print(f"loom detect: detections.json, images.json and {len(found)} PNG(s) in {args.out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from flows import generate, tracking

    try:
        directory, notes = generate.generate(
            args.prompt, args.out, args.n, args.steps, args.guidance, args.sampler, args.seed,
            args.run, args.model,
        )  # fmt: skip
    except (generate.GenerateError, tracking.TrackingError) as err:
        print(f"loom generate: error: {err}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"loom generate: warning: {note}", file=sys.stderr)
    print(f"loom generate: {args.n} image(s) of {args.prompt!r} from {directory} in {args.out}")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from flows import project, tracking

    root = project.find_root()
    print(ui_command(root, tracking.tracking_uri(root)))
    print("prefect server start --host 127.0.0.1  # then open http://127.0.0.1:4200")
    return 0


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    completions = {
        "file": shtab.FILE,
        "directory": shtab.DIRECTORY,
        "stage": shtab.cmd(_STAGE_NAMES),
    }
    full = parser()
    for action in _actions(full):
        kind = getattr(action, _COMPLETE_ATTR, None)
        if kind is not None:
            action.complete = completions[kind]  # type: ignore[attr-defined]  # read by shtab
    print(shtab.complete(full, shell=args.shell))
    return 0


def _actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of `p` and of its subcommands, depth first."""
    found = list(p._actions)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _actions(child)
    return found


class LoomParser(argparse.ArgumentParser):
    """argparse's parser, with a usage error in one line: `loom run: error: argument
    -S/--set-param: ... (see: loom run --help)`, exit 2. The usage text argparse prints
    first would push the reason off a small terminal and into every log line's way."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


class _VersionAction(argparse._VersionAction):
    """`--version`: `loom <version>` from the installed package's metadata, looked up only
    when asked (every `loom stage` that `dvc repro` runs builds this parser)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib import metadata

        try:
            version = metadata.version("loom")
        except metadata.PackageNotFoundError:
            version = "(not installed: no package metadata; pip install -e .)"
        print(f"loom {version}")  # stdout, as argparse's own --version
        parser.exit()


# Completion of stage names (`loom run <TAB>`): what DVC lists for the project the shell is in.
_STAGE_NAMES = "dvc stage list --name-only 2>/dev/null"
_COMPLETE_ATTR = "loom_complete"  # on an action: "file", "directory" or "stage"
SHELLS = ("bash", "zsh", "tcsh", "fish", "powershell")  # shtab 1.13's SUPPORTED_SHELLS


def _completes(action: argparse.Action, kind: str) -> argparse.Action:
    """Mark what `action`'s value is ("file", "directory", "stage"), for `loom completion`
    to tell shtab; shtab itself (0.1 s to import) is only imported by that command."""
    setattr(action, _COMPLETE_ATTR, kind)  # argparse.Action declares no such field
    return action


def parser() -> argparse.ArgumentParser:
    p = LoomParser(prog="loom", description=__doc__)
    p.add_argument(
        "--version", action=_VersionAction, help="print `loom <version>` and exit", version=""
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do (loom COMMAND --help)"
    )

    s = sub.add_parser("stage", help="run one dvc.yaml stage (what each stage's cmd calls)")
    _completes(s.add_argument("name", help="stage name as in dvc.yaml, e.g. bpe@small"), "stage")
    s.set_defaults(func=_cmd_stage)

    r = sub.add_parser("run", help="run the pipeline as a Prefect flow over the dvc.yaml DAG")
    stages_help = "stages or stage groups to run (with their upstream); default: all"
    _completes(r.add_argument("stages", nargs="*", help=stages_help), "stage")
    r.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        type=_override,
        metavar="KEY=VALUE",
        help="set an existing params.yaml key before running (like `dvc exp run -S`); the value "
        "is YAML and is checked against every stage's config first (repeatable)",
    )
    overlay = r.add_argument(
        "-P",
        "--params-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="merge a params overlay (e.g. params.gpu.yaml) first; -S applies after (repeatable)",
    )
    _completes(overlay, "file")
    r.add_argument("--force", action="store_true", help="re-run selected stages even if unchanged")
    r.add_argument(
        "--jobs",
        "-j",
        type=_positive_int,
        default=1,
        help="stages to run concurrently (default 1); each gets cores/N torch threads",
    )
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

    rs = sub.add_parser(
        "runs",
        help="list recent stage runs from MLflow, newest first, with their key metrics",
        description="Recent stage runs (pipeline runs left out), newest first: run id, start, "
        "stage, status, duration, git commit and the stage's key metrics.",
    )
    rs.add_argument(
        "--last", type=_positive_int, default=20, metavar="N", help="how many (default 20)"
    )
    _completes(
        rs.add_argument(
            "--stage", help="only this stage (bpe@small) or stage group (bpe: all bpe@...)"
        ),
        "stage",
    )
    rs.add_argument(
        "--json", action="store_true", help="print the runs as a JSON list (full ids, all data)"
    )
    rs.set_defaults(func=_cmd_runs)

    cp = sub.add_parser(
        "compare",
        help="side-by-side params, metrics and data versions of runs",
        description="Runs side by side: params, metrics, DVC data versions and lineage, * "
        "where they differ. Name runs by id (or a unique prefix of 6+ hex digits, as `loom "
        "runs` lists them), or take the last N stage runs, one table per stage.",
    )
    cp.add_argument(
        "run_ids",
        nargs="*",
        metavar="RUN_ID",
        help="runs to compare (full id or unique prefix of 6+ hex digits), in this order",
    )
    cp.add_argument(
        "--last",
        type=_positive_int,
        metavar="N",
        help="the last N stage runs, grouped by stage (default 2)",
    )
    _completes(
        cp.add_argument("--stage", help="with --last: only this stage or stage group"),
        "stage",
    )
    cp.add_argument("--diff", action="store_true", help="only the rows where the runs differ")
    cp.add_argument(
        "--json",
        action="store_true",
        help="print JSON: a list of {stage, runs, differs} (with --sweep: the grid's points)",
    )
    cp.add_argument("--sweep", metavar="ID", help="the grid of a sweep, sorted by --metric")
    cp.add_argument("--metric", help="with --sweep: the metric to sort by")
    cp.add_argument("--desc", action="store_true", help="with --sweep --metric: highest first")
    cp.set_defaults(func=_cmd_compare)

    d = sub.add_parser("deploy", help="check server and pools, then deploy prefect.yaml")
    d.add_argument("names", nargs="*", help="deployments to deploy (default: all)")
    d.set_defaults(func=_cmd_deploy)

    pl = sub.add_parser("pull", help="fetch the outputs of a pipeline run (default: newest pushed)")
    _completes(pl.add_argument("stages", nargs="*", help="only these stages' outputs"), "stage")
    pl.add_argument("--run", help="MLflow id of the pipeline (parent) run")
    pl.set_defaults(func=_cmd_pull)

    dt = sub.add_parser(
        "detect",
        help="run a trained detector on image files: COCO-format JSON and drawn PNGs",
        description="Detect objects in IMAGEs with a trained detector: the project's own "
        "(when it has one), the one an MLflow run registered (--run), or a directory (--model). "
        "Writes detections.json (COCO results), images.json and a drawn PNG per image.",
    )
    _completes(
        dt.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG or JPEG files"),
        "file",
    )
    dt.add_argument("--run", metavar="ID", help="a detector@... stage run (id or 6+ hex prefix)")
    _completes(
        dt.add_argument("--model", type=Path, metavar="DIR", help="a detector directory"),
        "directory",
    )
    dt.add_argument(
        "--threshold", type=float, default=0.5, help="score a detection needs (default 0.5)"
    )
    _completes(
        dt.add_argument(
            "--out", type=Path, default=Path("detections"), metavar="DIR",
            help="where the JSON and PNGs go (default: detections/)",
        ),
        "directory",
    )  # fmt: skip
    dt.set_defaults(func=_cmd_detect)

    gn = sub.add_parser(
        "generate",
        help="draw images of a text prompt with a trained diffusion model: a PNG grid",
        description="Draw -n images of PROMPT with a trained text-conditioned diffusion model: "
        "the project's newest (data/diffusion/*), the one an MLflow run registered (--run), or "
        "a directory (--model). Sample j starts from the noise of seed (--seed, j).",
    )
    gn.add_argument("prompt", help='what to draw, e.g. "a handwritten seven"')
    gn.add_argument("-n", type=int, default=8, help="images (default 8)")
    gn.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    gn.add_argument(
        "--guidance", type=float, default=3.0, help="classifier-free guidance (default 3; 1 = none)"
    )
    gn.add_argument(
        "--sampler", choices=["ddim", "ddpm", "dpmpp_2m"], default="ddim",
        help="ddim (default), ddpm (ancestral) or dpmpp_2m (DPM-Solver++, good at <= 20 steps)",
    )  # fmt: skip
    gn.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    gn.add_argument("--run", metavar="ID", help="a train_diffusion@... stage run (id or prefix)")
    _completes(
        gn.add_argument("--model", type=Path, metavar="DIR", help="a diffusion model directory"),
        "directory",
    )
    _completes(
        gn.add_argument(
            "--out", type=Path, default=Path("generated.png"), metavar="FILE",
            help="the PNG grid to write (default: generated.png)",
        ),
        "file",
    )  # fmt: skip
    gn.set_defaults(func=_cmd_generate)

    register_services(sub)
    register_sweep(sub)

    u = sub.add_parser("ui", help="print the commands that open the MLflow and Prefect UIs")
    u.set_defaults(func=_cmd_ui)

    cm = sub.add_parser(
        "completion",
        help='print a shell completion script (e.g. eval "$(loom completion bash)")',
        description="Print the completion script for SHELL (commands, options, stage names "
        "from `dvc stage list`, files for -P).",
        epilog='bash: add `eval "$(loom completion bash)"` to ~/.bashrc. zsh: `mkdir -p '
        "~/.zfunc && loom completion zsh > ~/.zfunc/_loom`, and in ~/.zshrc `fpath=(~/.zfunc "
        "$fpath)` before `autoload -U compinit && compinit`. tcsh: `loom completion tcsh > "
        "~/.loom.tcsh`, and `source ~/.loom.tcsh` in ~/.tcshrc. Open a new shell after.",
    )
    cm.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    cm.set_defaults(func=_cmd_completion)
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
    stages = s.add_argument(
        "stages", nargs="*", help="stages or stage groups to run (with their upstream)"
    )
    _completes(stages, "stage")
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
        "-j",
        "--max-parallel",
        type=_positive_int,
        default=2,
        help="points to run at once (default 2)",
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
    state_dir = common.add_argument(
        "--state-dir",
        type=Path,
        help="pid files, logs, databases (default: $LOOM_STATE_DIR or <project>/.loom/services)",
    )
    _completes(state_dir, "directory")
    p = subparsers.add_parser(
        "services",
        help="start/stop local Prefect and MLflow servers and Prefect workers",
        description=(services.__doc__ or "").split("\n\n")[0],
        epilog='`up` prints only `export NAME=URL` lines on stdout: eval "$(loom services up)". '
        f"`status` exits 0 when every recorded service is healthy, {SERVICES_NOT_HEALTHY} "
        "otherwise (also when none is recorded).",
    )
    sub = p.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="up, down or status"
    )

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
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's (and others') usage analytics: off
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
    except BrokenPipeError:
        # `loom runs --json | head`: the reader is gone, which is no error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again, and exit
        # as a tool killed by SIGPIPE does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
