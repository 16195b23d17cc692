"""The autoencoder and encode_latents stages, run as the runner runs them (StageIO with a
recording logger), on a small real data set: the first 160 MNIST digits of the images stage."""

import pytest
import torch

from components.config import build
from components.stage import RecordingLogger, StageInputError, StageIO, StageLogger
from components.vision.autoencoder.encode_stage import STAGE as ENCODE
from components.vision.autoencoder.latents import read_latents, read_meta
from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.serve import load as load_served
from components.vision.autoencoder.stage import STAGE as AUTOENCODER
from components.vision.autoencoder.stage import load_split, subset
from components.vision.autoencoder.task import to_float
from components.vision.data.config import ImagesConfig
from components.vision.data.stage import STAGE as IMAGES
from components.vision.data.store import read_images
from components.vision.grid import decode_png

STEPS = 12


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("images") / "digits"
    config = build(ImagesConfig, {"source": "digits", "limit": 160, "val_fraction": 0.2})
    IMAGES.run(config, StageIO(inputs={}, outputs={"images": out}))
    return out


def _config(kind: str, **train):
    return build(
        AUTOENCODER.config,
        {
            "kind": kind,
            "network": {"channels": 8, "max_channels": 16, "norm_groups": 4, "downsample": 4},
            "quantizer": {"codebook_size": 32},
            "loss": {"discriminator": kind == "kl", "disc_start": 6},
            "eval": {"grid_images": 8, "prior_samples": 8, "metric_images": 16},
            "train": {"steps": STEPS, "batch_size": 16, "lr": 2e-3, "val_every": 6,
                      "checkpoint_every": 4, "log_every": 2, "progress": False, **train},
        },
    )  # fmt: skip


def _train(config, images, out, work=None, log=None):
    io = StageIO({"images": images}, {"model": out}, work, log or RecordingLogger())
    return AUTOENCODER.run(config, io), io.log


@pytest.fixture(scope="module")
def kl_model(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("kl") / "model"
    result, log = _train(_config("kl"), digits, out)
    return out, result, log


def test_kl_stage_writes_the_model_grids_and_metrics(kl_model, digits):
    out, result, log = kl_model
    assert {p.name for p in out.iterdir()} == {
        "config.json", "model.safetensors", "reconstructions.png", "prior_samples.png",
    }  # fmt: skip
    metrics = result.metrics
    assert {"psnr", "ssim", "l1", "kl", "scale_factor", "latent_std"} <= set(metrics)
    assert "codebook_usage" not in metrics
    assert metrics["psnr"] > 8 and 0 < metrics["ssim"] <= 1 and metrics["steps"] == STEPS
    # live: grids and eval metrics at every validation, loss terms at every report
    grids = {(name, step) for name, step, _ in log.images}
    assert grids == {(n, s) for n in ("reconstructions", "prior_samples") for s in (6, 12)}
    curves = log.series()
    assert [s for s, _ in curves["eval/psnr"]] == [6, 12]
    assert [s for s, _ in curves["train/loss/autoencoder"]] == list(range(2, STEPS + 1, 2))
    assert curves["train/loss/discriminator"][0][0] == 8  # the first report from disc_start on
    # the grid: 8 originals over their 8 reconstructions, 32 px cells with 2 px padding
    grid = decode_png((out / "reconstructions.png").read_bytes())
    assert grid.shape == (2 * 34 + 2, 8 * 34 + 2, 3)
    originals = subset(load_split(digits, "val"), 8)  # the grid's val images, seeded
    assert (grid[2:34, 2:34, 0] == originals[0, 0].numpy()).all()


def test_saved_scale_factor_gives_unit_variance_latents(kl_model, digits):
    out, result, _ = kl_model
    autoencoder = Autoencoder.load(out)
    assert autoencoder.scale_factor == pytest.approx(result.metrics["scale_factor"])
    images = to_float(load_split(digits, "train"))  # 128 images: all used for the scale
    # the stage's draws (seed 0, one CPU batch), through the saved model: unit variance
    mean = autoencoder.network.posterior(images).mean
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    z = autoencoder.encode(images, noise=noise)
    assert z.shape == (len(images), 4, 8, 8)
    assert float(z.double().std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    # a draw is not the mean: the posterior's own noise is in the latents the scale is for
    means = autoencoder.encode(images)
    assert not torch.allclose(z, means) and float(means.std()) < float(z.std())


def test_encode_latents_writes_scaled_latents_with_their_captions(kl_model, digits, tmp_path):
    model, _, _ = kl_model
    config = build(ENCODE.config, {"posterior": "sample", "seed": 0})
    io = StageIO({"model": model, "images": digits}, {"latents": tmp_path / "latents"})
    result = ENCODE.run(config, io)
    train = read_latents(tmp_path / "latents", "train")
    images = read_images(digits / "train.parquet")
    assert train.latents.shape == (len(images), 4, 8, 8)
    assert train.ids.tolist() == images.ids.tolist() and train.captions == images.captions
    assert train.labels == images.labels and train.captions[0].startswith("a handwritten")
    assert result.metrics["train_latent_std"] == pytest.approx(1.0, abs=0.05)
    assert abs(result.metrics["train_latent_mean"]) < 0.5
    meta = read_meta(tmp_path / "latents")
    assert meta["latent_shape"] == [4, 8, 8] and meta["counts"]["val"] == len(
        read_images(digits / "val.parquet")
    )
    # seeded by (seed, image id): the same draws again, whatever the runtime batch size
    small_batches = build(ENCODE.config, {"posterior": "sample", "seed": 0, "batch_size": 7})
    ENCODE.run(small_batches, StageIO(io.inputs, {"latents": tmp_path / "again"}))
    again = read_latents(tmp_path / "again", "train").latents  # the same up to conv rounding
    assert torch.allclose(again, train.latents, atol=1e-5)
    means = build(ENCODE.config, {"posterior": "mean"})
    ENCODE.run(means, StageIO(io.inputs, {"latents": tmp_path / "means"}))
    assert not torch.allclose(read_latents(tmp_path / "means", "train").latents, again)


def test_vq_stage_reports_codebook_usage(digits, tmp_path):
    config = _config("vq")
    config.eval.metric_images = 1000  # the whole val set, as the final metrics
    result, log = _train(config, digits, tmp_path / "vq")
    assert 0 < result.metrics["codebook_usage"] <= 1 and result.metrics["perplexity"] > 1
    # measuring the trained model (scale factor, final metrics) does not update its codebook
    last = {name: curve[-1] for name, curve in log.series().items()}
    for name in ("psnr", "codebook_usage", "perplexity"):
        assert last[f"eval/{name}"] == (STEPS, pytest.approx(result.metrics[name], abs=1e-9))
    assert "kl" not in result.metrics
    assert {name for name, _, _ in log.images} == {"reconstructions"}
    assert not (tmp_path / "vq" / "prior_samples.png").exists()


class CrashAt(StageLogger):
    """A crash of the stage right after step `step`'s report (its checkpoint is written)."""

    def __init__(self, step: int):
        self.step = step

    def log_metrics(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt(f"crash at step {step}")


def test_a_crashed_run_resumes_to_the_weights_of_an_uninterrupted_one(digits, kl_model, tmp_path):
    config = _config("kl")
    with pytest.raises(KeyboardInterrupt):
        _train(config, digits, tmp_path / "a", work=tmp_path / "work", log=CrashAt(8))
    assert not (tmp_path / "a").exists()  # nothing written before training ends
    result, _ = _train(config, digits, tmp_path / "a", work=tmp_path / "work")
    resumed = Autoencoder.load(tmp_path / "a").network.state_dict()
    straight = Autoencoder.load(kl_model[0]).network.state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert result.metrics["psnr"] == kl_model[1].metrics["psnr"]


@pytest.mark.parametrize(
    ("images", "train", "network", "message"),
    [
        ({"limit": 160}, {"batch_size": 160}, {}, r"train\.parquet: \d+ training images, fewer "
         r"than one batch \(train\.batch_size = 160\)"),
        ({"limit": 40, "size": 36}, {}, {"downsample": 8}, r"meta\.json: images of side 36 do "
         r"not divide by network\.downsample = 8"),
    ],
)  # fmt: skip
def test_data_that_does_not_fit_the_config_fails_before_training(
    images, train, network, message, tmp_path
):
    source = tmp_path / "images"
    IMAGES.run(build(ImagesConfig, {"source": "digits", **images}), StageIO({}, {"images": source}))
    config = _config("kl", **train)
    config.network.__dict__.update(network)
    with pytest.raises(StageInputError, match=message):
        _train(config, source, tmp_path / "model", work=tmp_path / "work")
    assert not (tmp_path / "model").exists() and not (tmp_path / "work").exists()


def test_encode_latents_rejects_images_the_model_was_not_trained_on(kl_model, tmp_path):
    shapes = tmp_path / "shapes"
    config = build(ImagesConfig, {"source": "shapes", "shapes": {"count": 30}})
    IMAGES.run(config, StageIO({}, {"images": shapes}))
    io = StageIO({"model": kl_model[0], "images": shapes}, {"latents": tmp_path / "latents"})
    with pytest.raises(StageInputError, match=r"3 channel\(s\), but the autoencoder in .* was "
                       r"trained on side 32 with 1"):  # fmt: skip
        ENCODE.run(build(ENCODE.config, {}), io)


def test_no_validation_images_fails_naming_the_file(tmp_path):
    source = tmp_path / "images"
    config = build(ImagesConfig, {"source": "digits", "limit": 40, "val_fraction": 0.001})
    IMAGES.run(config, StageIO({}, {"images": source}))
    with pytest.raises(StageInputError, match=r"val\.parquet: no validation images"):
        _train(_config("kl"), source, tmp_path / "model")


def test_served_model_takes_what_a_model_server_sends(kl_model, digits):
    served = load_served(kl_model[0])
    images = read_images(digits / "val.parquet").images[:3]  # uint8 [3, 32, 32, 1]
    latents = served.predict(images)
    assert latents.shape == (3, 4, 8, 8) and latents.dtype == "float32"
    pixels = to_float(torch.from_numpy(images).permute(0, 3, 1, 2))
    expected = Autoencoder.load(kl_model[0]).encode(pixels)
    assert torch.allclose(torch.from_numpy(latents), expected)
    assert (served.predict(images[..., 0].tolist()) == latents).all()  # lists, grey [N, H, W]
    assert served.decode(latents).shape == (3, 32, 32, 1)
    with pytest.raises(ValueError, match=r"expected \[N, 32, 32, 1\]"):
        served.predict(images[:, :16])
    with pytest.raises(ValueError, match="expected uint8 pixels 0-255"):
        served.predict(images.astype("int64") + 300)
