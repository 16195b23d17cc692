import pytest

from flows import atomic


def test_outputs_swap_in_only_on_success(tmp_path):
    out_dir, out_file = tmp_path / "data" / "tok", tmp_path / "data" / "ids.txt"
    out_dir.mkdir(parents=True)
    (out_dir / "old.txt").write_text("old")
    out_file.write_text("old")

    with pytest.raises(RuntimeError):
        with atomic.staged_outputs({"d": out_dir, "f": out_file}) as scratch:
            scratch["d"].mkdir()
            (scratch["d"] / "new.txt").write_text("new")
            raise RuntimeError("stage crashed")
    assert (out_dir / "old.txt").read_text() == "old" and out_file.read_text() == "old"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ids.txt", "tok"]

    with atomic.staged_outputs({"d": out_dir, "f": out_file}) as scratch:
        scratch["d"].mkdir()
        (scratch["d"] / "new.txt").write_text("new")
        scratch["f"].write_text("new")
    assert [p.name for p in out_dir.iterdir()] == ["new.txt"] and out_file.read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ids.txt", "tok"]


def test_missing_declared_output_is_an_error_and_keeps_old(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError, match="did not write its declared outputs"):
        with atomic.staged_outputs({"o": target}):
            pass
    assert target.read_text() == "old"


def test_stale_scratch_of_a_killed_run_is_cleaned(tmp_path):
    target = tmp_path / "tok"
    stale = tmp_path / f"{atomic.SCRATCH_PREFIX}999-tok"
    stale.mkdir()
    (stale / "partial").write_text("x")
    with atomic.staged_outputs({"t": target}) as scratch:
        scratch["t"].write_text("done")
    assert not stale.exists() and target.read_text() == "done"


def test_scratch_of_a_live_process_is_left_alone(tmp_path):
    """Two runs in one workspace: cleaning must not pull a live run's scratch from under it."""
    import subprocess
    import sys

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        target = tmp_path / "tok"
        theirs = tmp_path / f"{atomic.SCRATCH_PREFIX}{live.pid}-tok"
        theirs.mkdir()
        with atomic.staged_outputs({"t": target}) as scratch:
            scratch["t"].write_text("mine")
        assert theirs.is_dir() and target.read_text() == "mine"
    finally:
        live.kill()
        live.wait()
    with atomic.staged_outputs({"t": target}) as scratch:  # now its process is gone
        scratch["t"].write_text("again")
    assert not theirs.exists()


def test_an_unwritable_output_location_fails_before_any_work(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the outputs' directory should be")
    worked = []
    with pytest.raises(atomic.OutputError, match=f"{blocker}: cannot write outputs there"):
        with atomic.staged_outputs({"t": blocker / "tok"}):
            worked.append(True)
    assert not worked and blocker.read_text().startswith("a file")


def test_write_text_leaves_no_temp_file_on_failure(tmp_path):
    with pytest.raises(TypeError):
        atomic.write_text(tmp_path / "m.json", None)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
