"""Live tracking into a real MLflow store (the session's SQLite one): metric history while the
work runs, images and texts as artifacts, a failing tracking request that loses nothing."""

from __future__ import annotations

import io
import logging

import mlflow
import numpy as np
import pytest
from PIL import Image

from components.stage import StageLogger
from flows import live


@pytest.fixture
def run_id(experiment, tmp_path) -> str:
    client = mlflow.MlflowClient()
    # Artifacts in the test's own directory (the store's default is ./mlruns in the cwd).
    where = (tmp_path / "artifacts").as_uri()
    exp_id = client.create_experiment(experiment, artifact_location=where)
    return client.create_run(exp_id).info.run_id


def history(run_id: str, name: str) -> list[tuple[int, float]]:
    points = mlflow.MlflowClient().get_metric_history(run_id, name)
    return sorted((m.step, m.value) for m in points)


def test_metrics_reach_the_run_while_it_works(run_id, monkeypatch):
    monkeypatch.setattr(live, "FLUSH_SECONDS", 0.0)  # every call flushes
    logger = live.StageLog(mlflow.MlflowClient(), run_id)
    logger.log_metrics(1, {"loss": 2.5, "lr": 0.1})
    assert history(run_id, "loss") == [(1, 2.5)]  # before the stage ends
    logger.log_metrics(2, {"loss": 2.0})
    assert history(run_id, "loss") == [(1, 2.5), (2, 2.0)]
    assert logger.series() == {"loss": [(1, 2.5), (2, 2.0)], "lr": [(1, 0.1)]}


def test_points_are_batched_and_flushed_at_the_end(run_id):
    logger = live.StageLog(mlflow.MlflowClient(), run_id)
    for step in range(1500):
        logger.log_metrics(step, {"loss": 1.0 / (step + 1)})
    assert len(history(run_id, "loss")) == live.FLUSH_POINTS  # one full batch went
    logger.flush()
    assert [s for s, _ in history(run_id, "loss")] == list(range(1500))


def test_images_and_texts_are_run_artifacts(run_id, tmp_path):
    client = mlflow.MlflowClient()
    logger = live.StageLog(client, run_id)
    grid = np.zeros((8, 8, 3), dtype=np.uint8)
    grid[:4] = 255
    png = io.BytesIO()
    Image.fromarray(grid).save(png, format="PNG")
    logger.log_image("samples", 10, grid)
    logger.log_image("samples", 20, png.getvalue())
    logger.log_text("notes.md", "# step 20\n")
    paths = [a.path for a in client.list_artifacts(run_id)]
    assert "notes.md" in paths and "images" in paths
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert sum(p.endswith(".png") for p in images) == 2
    got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notes.md",
                                              dst_path=str(tmp_path))  # fmt: skip
    assert open(got).read() == "# step 20\n"
    assert [(n, s) for n, s, _ in logger.images] == [("samples", 10), ("samples", 20)]


class FlakyClient:
    """The real client, whose next `fail` log_batch requests fail as a dropped server would."""

    def __init__(self, fail: int):
        self.client, self.fail = mlflow.MlflowClient(), fail

    def log_batch(self, run_id, metrics):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("tracking server unreachable")
        return self.client.log_batch(run_id, metrics=metrics)


def test_a_failing_tracking_request_keeps_the_points(run_id, monkeypatch, caplog):
    monkeypatch.setattr(live, "FLUSH_SECONDS", 0.0)
    logger = live.StageLog(FlakyClient(fail=2), run_id)
    with caplog.at_level(logging.WARNING, logger="flows.live"):
        logger.log_metrics(1, {"loss": 3.0})  # fails: kept
        logger.log_metrics(2, {"loss": 2.0})  # fails again: kept, no second warning
    assert history(run_id, "loss") == []
    assert sum("tracking server unreachable" in r.message for r in caplog.records) == 1
    logger.log_metrics(3, {"loss": 1.0})  # the server is back: all three go
    assert history(run_id, "loss") == [(1, 3.0), (2, 2.0), (3, 1.0)]


def test_only_rank_zero_records(run_id, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = live.for_rank(mlflow.MlflowClient(), run_id)
    assert type(logger) is StageLogger
    logger.log_metrics(1, {"loss": 1.0})
    monkeypatch.setenv("RANK", "0")
    assert isinstance(live.for_rank(mlflow.MlflowClient(), run_id), live.StageLog)
    assert history(run_id, "loss") == []
