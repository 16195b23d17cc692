"""flows/project.py: a stage's spec read while another process rewrites dvc.lock."""

import threading

import pytest

from flows import project
from tests.conftest import make_project

# stages: a mapping whose entry is not one: DVC's schema validation fails on it, the
# "'./dvc.lock' validation failed" of a lock read while DVC rewrites it
BROKEN_LOCK = "schema: '2.0'\nstages:\n  corpus: [\n"


def test_a_lock_file_read_half_written_is_read_again(tmp_path):
    root = make_project(tmp_path / "proj")
    lock = root / "dvc.lock"
    good = lock.read_text() if lock.exists() else "schema: '2.0'\nstages: {}\n"
    lock.write_text(BROKEN_LOCK)
    timer = threading.Timer(1.0, lambda: lock.write_text(good))
    timer.start()
    try:
        spec = project.load_spec(root, "bpe@small")
    finally:
        timer.join()
    assert spec.component == "text.bpe" and spec.config_key == "bpe.small"


def test_a_lock_file_that_stays_broken_is_reported(tmp_path):
    root = make_project(tmp_path / "proj")
    (root / "dvc.lock").write_text(BROKEN_LOCK)
    with pytest.raises(Exception, match="dvc.lock"):
        project.load_spec(root, "bpe@small", attempts=2)
