"""A stage on several processes: `loom stage` launches `torchrun` for it and stays the one owner.

With `runtime.<stage>.nproc: N` (N > 1) in params.yaml, the runner does everything it does for
one process (validation, the MLflow run, scratch outputs, the work dir) and then, instead of
calling the component, runs

    torchrun --standalone --nproc_per_node N -m flows.rank REQUEST RESULT

Every rank builds the same config and calls the component with the same `StageIO`; only rank
0 tracks live (`flows.live.for_rank`) and writes its `StageResult` to RESULT. The runner reads
that back and records it as for one process: one MLflow run, outputs swapped in once. Which
rank writes the outputs is the component's business (the training engine: rank 0 only).

torchrun runs in its own session and dies with this process (`flows.orphans`); an interrupt
of `loom stage` stops the whole group first. A rank that fails leaves its error for the
runner, which raises it as the one-line reason of the stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from components.config import to_dict
from components.stage import Dataset, Output, StageInputError, StageIO, StageResult
from flows import orphans

STOP_SECONDS = 20  # after SIGTERM, the ranks have this long before SIGKILL


class RankFailed(RuntimeError):
    """A rank of a distributed stage failed; the message is its error."""


def torchrun(
    component: str, config: Any, io: StageIO, nproc: int, run_id: str
) -> tuple[StageResult, dict[str, list[tuple[int, float]]]]:
    """Run component `component` on `nproc` processes; returns (StageResult, live series of
    rank 0: name -> [(step, value)], already in MLflow)."""
    with tempfile.TemporaryDirectory(prefix="loom-ranks-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(
            json.dumps(
                {
                    "component": component,
                    "config": to_dict(config),
                    "inputs": {k: str(v) for k, v in io.inputs.items()},
                    "outputs": {k: str(v) for k, v in io.outputs.items()},
                    "work": str(io.work) if io.work else None,
                    "run_id": run_id,
                    "errors": tmp,
                }
            )
        )
        argv = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "flows.rank", str(request), str(result),
        ]  # fmt: skip
        proc = subprocess.Popen(orphans.guarded(argv), start_new_session=True)
        try:
            rc = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        if rc != 0 or not result.is_file():
            raise _rank_error(Path(tmp), rc)
        return _read_result(json.loads(result.read_text()))


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_KNOWN = {"StageInputError": StageInputError, "ConfigError": ValueError, "ValueError": ValueError}


def _rank_error(errors: Path, rc: int) -> Exception:
    """The first failing rank's own error (its type when it is one a stage reports plainly)."""
    for path in sorted(errors.glob("error-rank*.json")):
        err = json.loads(path.read_text())
        kind = _KNOWN.get(err["type"], RankFailed)
        return kind(f"rank {err['rank']}: {err['message']}")
    return RankFailed(f"torchrun exited with {rc} before any rank reported an error")


def write_result(path: Path, result: StageResult, series: dict) -> None:
    def ref(p: Path | Output) -> Any:
        return {"role": p.role, "path": p.path} if isinstance(p, Output) else str(p)

    data = {
        "metrics": result.metrics,
        "curves": result.curves,
        "artifacts": [ref(a) for a in result.artifacts],
        "datasets": [
            {"name": d.name, "path": ref(d.path), "context": d.context, "num_rows": d.num_rows}
            for d in result.datasets
        ],
        "series": series,
    }
    path.write_text(json.dumps(data))


def _read_result(data: dict) -> tuple[StageResult, dict[str, list[tuple[int, float]]]]:
    def ref(p: Any) -> Path | Output:
        return Output(p["role"], p["path"]) if isinstance(p, dict) else Path(p)

    def series(curves: dict) -> dict[str, list[tuple[int, float]]]:
        return {k: [(int(s), float(v)) for s, v in points] for k, points in curves.items()}

    result = StageResult(
        metrics=data["metrics"],
        curves=series(data["curves"]),
        # write_result writes StageResult.artifacts (Outputs) as role/path mappings
        artifacts=cast(list[Output], [ref(a) for a in data["artifacts"]]),
        datasets=[
            Dataset(d["name"], ref(d["path"]), d["context"], d["num_rows"])
            for d in data["datasets"]
        ],
    )
    return result, series(data["series"])
