"""`loom generate` with a diffusion model directory (--model): the grid, its seeding, and each
refusal as one clear line with exit 1 and nothing written. (The model's quality is the
pipeline's business: tests/flows/test_vision_pipeline.py; here its weights are random.)"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from components.vision.grid import decode_png
from flows import generate
from tests.components.vision.diffusion.tiny import tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model().save(tmp_path_factory.mktemp("diffusion") / "model")


def _loom(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flows.cli", "generate", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True)  # fmt: skip


def test_writes_a_grid_of_n_images_the_same_for_the_same_seed(model, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    used, notes = generate.generate("a red circle", a, count=3, steps=5, model=model)
    assert used == model and notes == []
    grid = decode_png(a.read_bytes())
    assert grid.shape == (34 + 2, 3 * 34 + 2, 3)  # 3 images of 32 px, 2 px padding
    generate.generate("a red circle", b, count=3, steps=5, model=model)
    assert a.read_bytes() == b.read_bytes()
    generate.generate("a red circle", c, count=3, steps=5, model=model, seed=1)
    assert a.read_bytes() != c.read_bytes()
    cells = [grid[2:34, 2 + 34 * i : 34 * (i + 1)] for i in range(3)]
    assert not np.array_equal(cells[0], cells[1])  # sample j has its own noise


def test_command_line_with_sampler_and_guidance(model, tmp_path):
    res = _loom("a blue square", "-n", "2", "--steps", "4", "--sampler", "dpmpp_2m",
                "--guidance", "5", "--model", model, "--out", tmp_path / "sq.png",
                cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "2 image(s) of 'a blue square'" in res.stdout and not res.stderr
    assert decode_png((tmp_path / "sq.png").read_bytes()).shape == (36, 70, 3)


def test_a_prompt_longer_than_the_context_is_cut_with_a_warning(model, tmp_path):
    prompt = "a very long prompt indeed, longer than sixteen bytes"
    res = _loom(prompt, "-n", "1", "--steps", "2", "--model", model,
                "--out", tmp_path / "long.png", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("loom generate: warning: ") and "truncat" in line, line


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "an empty prompt"),
        ("steps", "--sampler/--steps: sampler.steps = 0: expected an int >= 1"),
        ("too_many_steps", "1000"),
        ("guidance", "--guidance -1.0: expected a float >= 0"),
        ("not_a_model", "not a diffusion model directory (no config.json)"),
        ("label_model", "a class-label model"),
        ("too_long", "max_tokens"),
        ("both", "pass --run or --model, not both"),
        ("no_project", "not in a Loom project: pass --model DIR (a diffusion model directory)"),
    ],
)
def test_refusals_are_one_line_exit_1_and_write_nothing(model, tmp_path, case, message):
    args = ["a handwritten seven", "--steps", "3", "--model", model, "--out", tmp_path / "o.png"]
    if case == "empty":
        args[0] = "  "
    elif case == "steps":
        args[2] = "0"
    elif case == "too_many_steps":
        args[2] = "5000"
    elif case == "guidance":
        args += ["--guidance", "-1"]
    elif case == "not_a_model":
        args[4] = tmp_path
    elif case == "label_model":
        args[4] = tiny_model("label").save(tmp_path / "labels")
    elif case == "too_long":
        args[4] = tiny_model(truncate="error").save(tmp_path / "strict")
    elif case == "both":
        args += ["--run", "abcdef"]
    elif case == "no_project":
        args = args[:3] + args[5:]  # no --model, and tmp_path is no project
    res = _loom(*args, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("loom generate: error: ") and message in line, line
    assert not (tmp_path / "o.png").exists()


def test_saved_config_names_the_models_parts(model):
    config = json.loads((model / "config.json").read_text())
    assert config["format"] == "loom-diffusion" and config["condition"] == "text"
    assert (model / "tokenizer").is_dir() and (model / "autoencoder" / "config.json").is_file()
