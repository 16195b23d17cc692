"""`loom pull`: bring a pipeline run's outputs into this checkout, wherever the run happened.

A worker runs in a throwaway clone; what survives is its outputs in the DVC remote and its
dvc.lock logged on the MLflow pipeline run. Restoring that dvc.lock here and `dvc pull`-ing
gives exactly the files that run produced.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from flows import atomic, git, project, tracking


class PullError(RuntimeError):
    """No such run, or the run has no dvc.lock / pushed outputs."""


def latest_pipeline_run(root: Path) -> str:
    import mlflow

    tracking.setup(root)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(tracking.experiment_name())
    runs = exp and client.search_runs(
        [exp.experiment_id],
        f"tags.`{tracking.PIPELINE_TAG}` = 'true' and tags.`{tracking.DVC_PUSHED_TAG}` = 'true'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise PullError("no pipeline run with pushed outputs is recorded in MLflow yet")
    return runs[0].info.run_id


def pull_run(root: Path, run_id: str | None, targets: list[str]) -> tuple[str, int]:
    """Restore run `run_id`'s dvc.lock (default: the newest pushed run) and pull its outputs."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.setup(root)
    run_id = run_id or latest_pipeline_run(root)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            lock = Path(client.download_artifacts(run_id, "dvc.lock", tmp))
            text = lock.read_text()
    except (MlflowException, OSError) as err:
        raise PullError(f"run {run_id}: cannot fetch its dvc.lock from MLflow: {err}") from None
    if run.data.tags.get(tracking.DVC_PUSHED_TAG) != "true":
        raise PullError(f"run {run_id} did not push its outputs to the DVC remote")
    commit = run.data.tags.get(tracking.GIT_COMMIT_TAG, "")
    here = git.checkout(root).commit
    if commit and commit != here:
        print(
            f"loom pull: note: run {run_id[:12]} ran commit {commit[:12]}; this checkout is at "
            f"{here[:12]} (dvc.lock now describes that run's outputs)",
            file=sys.stderr,
        )
    atomic.write_text(root / "dvc.lock", text)
    return run_id, project.pull(root, targets)
