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
