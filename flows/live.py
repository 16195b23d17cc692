"""Live tracking: the `StageLogger` a component calls while it works, bound to its MLflow run.

Metrics go to the run's metric history as they come (buffered for at most `FLUSH_SECONDS` or
`FLUSH_POINTS`, so a chatty trainer does not make one request per step); images and texts go as
run artifacts at once. The runner also keeps every metric series, to write the stage's DVC
plots file when the stage is done. A tracking server that fails a request does not stop the
training: the points stay buffered and go with the next flush (a warning says so once).

Only rank 0 of a distributed stage records: other ranks get a logger that drops everything,
so a component calls `io.log` the same way on every rank.
"""

from __future__ import annotations

import io as _io
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from components.stage import RecordingLogger, StageLogger

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0
FLUSH_POINTS = 1000  # MLflow's log_batch takes at most 1000 metrics per request


def for_rank(client: Any, run_id: str) -> StageLogger:
    """The live logger of this process: MLflow's on rank 0 (or without torchrun), else none."""
    if int(os.environ.get("RANK", "0")) != 0:
        return StageLogger()
    return StageLog(client, run_id)


class StageLog(RecordingLogger):
    """`StageLogger` into MLflow run `run_id`; `series()` holds every metric reported."""

    def __init__(self, client: Any, run_id: str):
        super().__init__()
        self.client, self.run_id = client, run_id
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._warned = False

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        super().log_metrics(step, metrics)
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if (
            len(self._pending) >= FLUSH_POINTS
            or time.monotonic() - self._last_flush >= FLUSH_SECONDS
        ):
            self.flush()

    def log_image(self, name: str, step: int, image: np.ndarray | bytes) -> None:
        super().log_image(name, step, image)
        if isinstance(image, bytes):
            from PIL import Image

            image = np.asarray(Image.open(_io.BytesIO(image)))
        self._send(lambda: self.client.log_image(self.run_id, image, key=name, step=int(step)))

    def log_text(self, name: str, text: str) -> None:
        super().log_text(name, text)
        self._send(lambda: self.client.log_text(self.run_id, text, name))

    def flush(self) -> None:
        """Send the buffered metric points (the runner calls it when the stage ends)."""
        self._last_flush = time.monotonic()
        while self._pending:
            batch = self._pending[:FLUSH_POINTS]
            if not self._send(lambda b=batch: self.client.log_batch(self.run_id, metrics=b)):
                return
            del self._pending[: len(batch)]

    def _send(self, request: Any) -> bool:
        try:
            request()
            return True
        except Exception as err:  # noqa: BLE001 - tracking must not kill the work
            if not self._warned:
                log.warning("live tracking: %s (kept; retried at the next flush)", err)
                self._warned = True
            return False
