import torch

from components.config import build
from components.train import train
from components.vision.diffusion.config import DiffusionConfig
from components.vision.diffusion.guidance import guided_denoiser
from components.vision.diffusion.samplers import SamplerConfig, build_sampler, sample
from components.vision.diffusion.task import (
    Condition,
    Denoiser,
    DiffusionTask,
    LatentConditions,
)
from components.vision.diffusion.text_encoder import tokenize_prompts


def _config(**train) -> DiffusionConfig:
    return build(
        DiffusionConfig,
        {
            "condition": "label",
            "loss": {"prediction": "v", "condition_dropout": 0.1},
            "unet": {"base_channels": 32, "channel_mult": [1, 2], "blocks_per_level": 1,
                     "attention_levels": [1], "groups": 8, "heads": 2},
            "train": {"steps": 400, "batch_size": 16, "lr": 2e-3, "warmup_steps": 20,
                      "log_every": 50, "progress": False, "device": "cpu", **train},
        },
    )  # fmt: skip


def test_overfit_a_handful_of_latents_and_sample_them_back():
    """Four latents, one label each: sampling label k lands near latent k."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 2, 4, 4, generator=generator)
    data = LatentConditions(latents.repeat(16, 1, 1, 1), labels=torch.arange(4).repeat(16))
    config = _config()
    unet = config.unet_config(latent_channels=2, num_classes=4)
    task = DiffusionTask(config, unet, None, data, None)
    torch.manual_seed(0)
    model = train(task, config.train).model.eval()

    labels = torch.arange(4).repeat_interleave(4)  # 4 samples per label
    cond = Condition(labels=labels)
    null = Condition(labels=torch.full_like(labels, 4))
    denoise = guided_denoiser(lambda x, t, c: model.denoise(x, t, c), cond, null, 2.0)
    noise = torch.randn(16, 2, 4, 4, generator=generator)
    sampler = build_sampler(SamplerConfig("ddim", 50), task.schedule, "v")
    with torch.no_grad():
        drawn = sample(sampler, denoise, noise)
    distance = torch.cdist(drawn.flatten(1), latents.flatten(1))  # [16, 4]
    assert (distance.argmin(dim=1) == labels).all()
    # RMS distance to the prompted latent, against ~1.41 between two of the latents
    rms = distance.gather(1, labels[:, None]).squeeze(1) / (32**0.5)
    assert rms.max().item() < 0.35, rms


def test_condition_dropout_replaces_the_observed_share_of_prompts_with_the_null_one():
    from components.text.bpe.tokenizer import BpeTokenizer

    tokenizer = BpeTokenizer({i: bytes([i]) for i in range(256)}, [])
    prompts = tokenize_prompts(tokenizer, ["a red circle"] * 4000, 16)
    null = tokenize_prompts(tokenizer, [""], 16)
    config = build(DiffusionConfig, {"loss": {"condition_dropout": 0.25}})
    data = LatentConditions(torch.zeros(4000, 4, 8, 8), prompts)
    task = DiffusionTask(config, config.unet_config(4, None), config.text, data, None, null)
    batch = task.collate([data[i] for i in range(4000)])
    torch.manual_seed(0)
    ids, mask, _ = task._dropped(batch)
    dropped = (ids == null.ids).all(dim=1)
    assert torch.equal(mask[dropped], null.padding_mask.expand(int(dropped.sum()), -1))
    assert abs(dropped.float().mean().item() - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    assert torch.equal(ids[~dropped], prompts.ids[~dropped])  # the rest untouched


def test_denoiser_with_text_runs_its_encoder_inside_forward():
    # DDP synchronises gradients through forward: both networks must get them from it
    config = build(
        DiffusionConfig,
        {"unet": {"base_channels": 16, "groups": 8, "blocks_per_level": 1},
         "text": {"dim": 32, "depth": 1, "heads": 2, "max_tokens": 8, "vocab_size": 256}},
    )  # fmt: skip
    model = Denoiser(config.unet_config(4, None), config.text)
    ids = torch.randint(0, 256, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    model(torch.randn(2, 4, 8, 8), torch.tensor([3, 50]), ids, mask).pow(2).sum().backward()
    embedding = model.text_encoder.embedding.weight  # type: ignore[union-attr]
    assert embedding.grad is not None
