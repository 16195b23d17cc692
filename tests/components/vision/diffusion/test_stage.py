"""The train_diffusion stage, run as the runner runs it (StageIO with a recording logger), on
real latents: the first 160 MNIST digits through a small autoencoder and encode_latents."""

import pytest
import torch

from components.config import build
from components.stage import RecordingLogger, StageInputError, StageIO
from components.text.bpe.trainer import train_bpe
from components.vision.autoencoder.encode_stage import STAGE as ENCODE
from components.vision.autoencoder.latents import read_latents
from components.vision.autoencoder.stage import STAGE as AUTOENCODER
from components.vision.data.config import ImagesConfig
from components.vision.data.stage import STAGE as IMAGES
from components.vision.diffusion.saved import DiffusionModel
from components.vision.diffusion.serve import load as load_served
from components.vision.diffusion.stage import STAGE as DIFFUSION
from components.vision.diffusion.stage import holds_phrase, without_held_out
from components.vision.grid import decode_png

STEPS = 12
CAPTIONS = [
    f"a handwritten {w}" for w in "zero one two three four five six seven eight nine".split()
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion_inputs")
    images = root / "images"
    config = build(ImagesConfig, {"source": "digits", "limit": 160, "val_fraction": 0.2})
    IMAGES.run(config, StageIO(inputs={}, outputs={"images": images}))
    ae_config = build(
        AUTOENCODER.config,
        {
            "kind": "kl",
            "network": {"channels": 8, "max_channels": 16, "norm_groups": 4, "downsample": 4},
            "loss": {"discriminator": False},
            "eval": {"grid_images": 8, "prior_samples": 8, "metric_images": 16},
            "train": {"steps": 4, "batch_size": 16, "progress": False},
        },
    )
    AUTOENCODER.run(ae_config, StageIO({"images": images}, {"model": root / "autoencoder"}))
    ENCODE.run(
        build(ENCODE.config, {}),
        StageIO({"model": root / "autoencoder", "images": images}, {"latents": root / "latents"}),
    )
    train_bpe(CAPTIONS * 4, vocab_size=300).save(root / "tokenizer")
    return {
        "latents": root / "latents",
        "autoencoder": root / "autoencoder",
        "tokenizer": root / "tokenizer",
    }


def _config(**changes):
    data = {
        "unet": {"base_channels": 16, "channel_mult": [1, 2], "blocks_per_level": 1,
                 "attention_levels": [1], "groups": 8, "heads": 2},
        "text": {"dim": 32, "depth": 1, "heads": 2, "max_tokens": 8},
        "preview": {"prompts": ["a handwritten seven", "a handwritten one"], "per_prompt": 3,
                    "sampler": {"kind": "ddim", "steps": 4}},
        "train": {"steps": STEPS, "batch_size": 16, "lr": 1e-3, "val_every": 6,
                  "checkpoint_every": 4, "log_every": 2, "progress": False, "ema_decay": 0.9},
    }  # fmt: skip
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return build(DIFFUSION.config, data)


def _train(config, inputs, out, work=None, log=None):
    io = StageIO(dict(inputs), {"model": out}, work, log or RecordingLogger())
    return DIFFUSION.run(config, io), io.log


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion") / "model"
    result, log = _train(_config(), inputs, out)
    return out, result, log


def test_stage_writes_a_self_contained_model_live_grids_and_metrics(trained):
    out, result, log = trained
    assert {p.name for p in out.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer", "autoencoder", "samples.png",
    }  # fmt: skip
    assert result.metrics["steps"] == STEPS
    assert {"loss", "mse", "parameters"} <= set(result.metrics)
    assert 0 < result.metrics["loss"] < 10
    assert [(name, step) for name, step, _ in log.images] == [("samples", 6), ("samples", 12)]
    curves = log.series()
    assert [s for s, _ in curves["train/loss"]] == list(range(2, STEPS + 1, 2))
    # the grid: 2 prompts x 3 samples of 32 px (2 px padding)
    grid = decode_png((out / "samples.png").read_bytes())
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)


def test_saved_model_generates_the_same_images_as_the_stage_drew(trained):
    out, _, log = trained
    model = DiffusionModel.load(out)
    assert model.condition == "text" and model.latent_shape == (4, 8, 8)
    a = model.generate(["a handwritten seven"], per_prompt=2, guidance=3.0, seed=0)
    b = model.generate(["a handwritten seven"], per_prompt=2, guidance=3.0, seed=0)
    assert a.dtype == torch.uint8 and a.shape == (2, 1, 32, 32)
    assert torch.equal(a, b)  # seeded
    c = model.generate(["a handwritten seven"], per_prompt=2, guidance=3.0, seed=1)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="an empty prompt"):
        model.generate([" "])


def test_served_model_answers_a_list_of_prompts(trained):
    served = load_served(trained[0])
    images = served.predict(["a handwritten two", "a handwritten two", "a handwritten nine"])
    assert images.shape == (3, 32, 32, 1) and images.dtype.name == "uint8"
    assert (images[0] == images[1]).all()  # the same prompt, the same image


class CrashAt(RecordingLogger):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def log_metrics(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt
        super().log_metrics(step, metrics)


def test_a_crashed_run_resumes_to_the_weights_of_an_uninterrupted_one(inputs, trained, tmp_path):
    config = _config()
    with pytest.raises(KeyboardInterrupt):
        _train(config, inputs, tmp_path / "a", work=tmp_path / "work", log=CrashAt(8))
    assert not (tmp_path / "a").exists()
    _train(config, inputs, tmp_path / "a", work=tmp_path / "work")
    resumed = DiffusionModel.load(tmp_path / "a").denoiser.state_dict()
    straight = DiffusionModel.load(trained[0]).denoiser.state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_label_condition_needs_no_tokenizer(inputs, tmp_path):
    config = _config(condition="label", preview={"prompts": [], "labels": [7, 1]})
    without = {k: v for k, v in inputs.items() if k != "tokenizer"}
    result, log = _train(config, without, tmp_path / "m")
    model = DiffusionModel.load(tmp_path / "m")
    assert model.condition == "label" and model.tokenizer is None
    assert model.generate([7], per_prompt=2).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"label 10: expected an int in \[0, 10\)"):
        model.generate([10])


@pytest.mark.parametrize(
    ("changes", "drop", "message"),
    [
        ({"train": {"batch_size": 500}}, None,
         r"train\.safetensors: \d+ training latents, fewer than one batch"),
        ({"unet": {"channel_mult": [1, 1, 1, 1, 1]}}, None,
         r"latent side \[8, 8\] does not divide by the UNet's downsampling 16"),
        ({"text": {"vocab_size": 999}}, None, r"text\.vocab_size: the tokenizer has vocab_size "
         r"300 but the text encoder was made for vocab_size 999"),
        ({}, "tokenizer", "condition: text, but the stage has no tokenizer input"),
        ({"word2vec_init": True}, None, "word2vec_init: true, but the stage has no word2vec"),
        ({"held_out": ["handwritten seven", "purple seven"]}, None,
         r"train\.safetensors: held_out \['purple seven'\] occur in no training caption"),
    ],
)  # fmt: skip
def test_inputs_that_do_not_fit_fail_before_training(inputs, tmp_path, changes, drop, message):
    given = {k: v for k, v in inputs.items() if k != drop}
    with pytest.raises(StageInputError, match=message):
        _train(_config(**changes), given, tmp_path / "m", work=tmp_path / "work")
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_latents_of_another_autoencoder_are_refused(inputs, tmp_path):
    other = tmp_path / "other_ae"
    ae_config = build(
        AUTOENCODER.config,
        {
            "kind": "kl",
            "network": {"channels": 8, "max_channels": 16, "norm_groups": 4, "downsample": 2,
                        "latent_channels": 4},
            "loss": {"discriminator": False},
            "eval": {"grid_images": 8, "prior_samples": 8, "metric_images": 16},
            "train": {"steps": 1, "batch_size": 16, "progress": False},
        },
    )  # fmt: skip
    images = inputs["latents"].parent / "images"
    AUTOENCODER.run(ae_config, StageIO({"images": images}, {"model": other}))
    with pytest.raises(StageInputError, match=r"latent_shape \[4, 8, 8\], but the autoencoder"):
        _train(_config(), {**inputs, "autoencoder": other}, tmp_path / "m")


def test_holds_phrase_matches_whole_words_only():
    assert holds_phrase("a small Yellow  circle left of a red star", "yellow circle")
    assert not holds_phrase("a small yellow circles", "yellow circle")
    assert not holds_phrase("a yellow square and a circle", "yellow circle")


def test_held_out_captions_never_reach_training_and_the_model_keeps_the_list(inputs, tmp_path):
    split = read_latents(inputs["latents"], "train")
    kept, counts = without_held_out(split, ["seven", "handwritten one"])
    sevens = sum(c.endswith("seven") for c in split.captions)
    ones = sum(c.endswith(" one") for c in split.captions)
    assert counts == [sevens, ones] and sevens > 0 and ones > 0
    assert len(kept) == len(split) - sevens - ones
    assert not any(c.endswith(("seven", " one")) for c in kept.captions)
    assert kept.latents.shape[0] == len(kept) and kept.ids.tolist() == [
        i for i, c in zip(split.ids.tolist(), split.captions, strict=True)
        if not c.endswith(("seven", " one"))
    ]  # fmt: skip

    config = _config(held_out=["seven"], train={"steps": 2, "val_every": 2})
    result, _ = _train(config, inputs, tmp_path / "m")
    assert result.metrics["held_out_latents"] == sevens
    assert DiffusionModel.load(tmp_path / "m").held_out == ["seven"]
