import pytest
import torch
from torch import nn

from components.config import ConfigError, build
from components.train.engine import train
from components.vision.autoencoder.config import AutoencoderConfig, NetworkConfig
from components.vision.autoencoder.evaluate import reconstruction_metrics
from components.vision.autoencoder.loss import adaptive_weight
from components.vision.autoencoder.model import DiagonalGaussian, build_network
from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import AutoencoderTask, to_float

SMALL = {"channels": 8, "max_channels": 16, "norm_groups": 4}


def _images(n: int = 16, channels: int = 1) -> torch.Tensor:
    """Blocky uint8 images [n, C, 16, 16]: each a bright square on black."""
    images = torch.zeros(n, channels, 16, 16, dtype=torch.uint8)
    for i in range(n):
        r, c = (i * 3) % 9, (i * 5) % 9
        images[i, :, r : r + 6, c : c + 6] = 255
    return images


def test_kl_of_a_standard_normal_posterior_is_zero():
    moments = torch.zeros(2, 8, 3, 3)  # mean 0, logvar 0
    assert torch.equal(DiagonalGaussian(moments).kl(), torch.zeros(2, 4, 3, 3))
    moments[:, :4] = 1.0
    assert torch.allclose(DiagonalGaussian(moments).kl(), torch.full((2, 4, 3, 3), 0.5))


def test_adaptive_weight_equals_its_formula_on_a_toy_decoder():
    torch.manual_seed(0)
    last = nn.Linear(3, 2)
    h = torch.randn(5, 3)
    out = last(h)
    rec = out.pow(2).mean()
    g = -out.sum() * 0.1
    grad_rec = torch.autograd.grad(rec, last.weight, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g, last.weight, retain_graph=True)[0]
    expected = grad_rec.norm() / (grad_g.norm() + 1e-4)
    assert torch.allclose(adaptive_weight(rec, g, last.weight, 1e4), expected)
    assert float(adaptive_weight(rec, g, last.weight, 1e-3)) == pytest.approx(1e-3)


def _config(kind: str, steps: int, **loss) -> AutoencoderConfig:
    return build(
        AutoencoderConfig,
        {
            "kind": kind,
            "network": {**SMALL, "downsample": 2, "latent_channels": 2},
            "quantizer": {"codebook_size": 32, "code_dim": 2},
            "loss": {"discriminator": False, **loss},
            "train": {"steps": steps, "batch_size": 8, "lr": 3e-3, "progress": False,
                      "warmup_steps": 5, "log_every": 1},
        },
    )  # fmt: skip


def test_the_discriminator_starts_at_disc_start():
    config = _config("kl", 4, discriminator=True, disc_start=2, disc_layers=1, disc_channels=8)
    task = AutoencoderTask(config, _images(), None)
    seen = []
    original = task.loss

    def loss(model, batch, step):
        seen.append((step, [p.detach().clone() for p in model.discriminator.parameters()]))
        return original(model, batch, step)

    task.loss = loss
    reports = []
    train(task, config.train, on_metrics=lambda s, m: reports.append((s, m)))
    weights = {step: params for step, params in seen}
    same = [
        all(torch.equal(a, b) for a, b in zip(weights[0], weights[s], strict=True))
        for s in (1, 2, 3)
    ]
    assert same == [True, True, False]  # updated first by step 2 (seen at step 3)
    assert "train/loss/discriminator" not in reports[1][1]  # step 2 report: steps 0..1
    assert "train/loss/discriminator" in reports[2][1]


@pytest.mark.parametrize("kind, threshold", [("kl", 20.0), ("vq", 18.0)])
def test_overfits_16_images(kind, threshold):
    config = _config(kind, 150)
    images = _images()
    result = train(AutoencoderTask(config, images, None), config.train)
    metrics = reconstruction_metrics(result.model.autoencoder, images)
    assert metrics["psnr"] > threshold, metrics


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_encode_decode_round_trip_through_the_scale_and_save_load(kind, tmp_path):
    config = _config(kind, 1)
    torch.manual_seed(0)
    network = build_network(kind, config.network, config.quantizer, 1).eval()
    ae = Autoencoder(network, image_size=16, scale_factor=0.25)
    x = to_float(_images(4))
    z = ae.encode(x)
    assert z.shape == (4, *ae.latent_shape) == (4, 2, 8, 8)
    assert torch.allclose(z, network.latents(x, sample=False) * 0.25)
    assert torch.allclose(ae.decode(z), network.decode(z / 0.25))
    ae.save(tmp_path)
    again = Autoencoder.load(tmp_path)
    assert again.scale_factor == 0.25 and again.kind == kind
    assert torch.equal(again.encode(x), z) and torch.equal(again.decode(z), ae.decode(z))
    with pytest.raises(ValueError, match="expected"):
        ae.encode(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize(
    "section, data, key",
    [
        (NetworkConfig, {"latent_channels": 0}, "latent_channels"),
        (NetworkConfig, {"downsample": 3}, "downsample"),
        (AutoencoderConfig, {"loss": {"disc_start": 10}, "train": {"steps": 10}}, "disc_start"),
    ],
)
def test_bad_config_names_the_key(section, data, key):
    with pytest.raises(ConfigError, match=key):
        build(section, data, "autoencoder")
