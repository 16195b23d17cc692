"""What `loom run` reports: the summary table."""

from __future__ import annotations

from flows import plan


def test_a_summary_shows_no_wall_clock_metric():
    timed = {"train_units_per_second": 9.0, "train_seconds": 2.0, "stage_seconds": 3.0}
    ran = plan.StageReport("w2v", "ran", 3.0, {**timed, "final_loss": 0.5}, run_id="r1")
    keyed = plan.StageReport("bpe", "ran", 1.0, {**timed, "vocab_size": 300.0}, key_metrics=["x"])
    lines = plan.format_summary([ran, keyed]).splitlines()
    assert "final_loss=0.5" in lines[2] and "vocab_size=300" in lines[3]
    assert not any(name in line for line in lines for name in timed)
