"""One rank of a distributed stage: `torchrun ... -m flows.rank REQUEST RESULT` (see
`flows.launch`). Builds the config the runner resolved, calls the component, and on rank 0
writes its result; a rank that fails writes its error beside the request and exits 1."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from components import registry
from components.config import build
from components.stage import StageIO
from flows import launch, live


def main(request_path: str, result_path: str) -> int:
    import mlflow

    request = json.loads(Path(request_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    logger = live.for_rank(mlflow.MlflowClient(), request["run_id"])
    try:
        stage = registry.load(request["component"])
        config = build(stage.config, request["config"], where=request["component"])
        io = StageIO(
            inputs={k: Path(v) for k, v in request["inputs"].items()},
            outputs={k: Path(v) for k, v in request["outputs"].items()},
            work=Path(request["work"]) if request["work"] else None,
            log=logger,
        )
        result = stage.run(config, io)
        if isinstance(logger, live.StageLog):
            logger.flush()
        if rank == 0:
            series = logger.series() if isinstance(logger, live.StageLog) else {}
            launch.write_result(Path(result_path), result, series)
        return 0
    except Exception as err:
        if isinstance(logger, live.StageLog):
            logger.flush()  # what rank 0 reported before the failure stays in MLflow
        traceback.print_exc()
        error = {"rank": rank, "type": type(err).__name__, "message": str(err)}
        (Path(request["errors"]) / f"error-rank{rank}.json").write_text(json.dumps(error))
        return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
