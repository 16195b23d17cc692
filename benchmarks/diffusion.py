"""Loom's text-conditioned latent diffusion against diffusers', trained the same way in one run:
`Denoiser` (UNet + text encoder) vs diffusers' UNet2DConditionModel + DDPMScheduler of matched
size, then DDIM at 50 steps vs DPM-Solver++(2M) at 20 on the Loom model.

    .venv/bin/python benchmarks/diffusion.py [--device cpu|cuda] [--steps 1000] [--batch 64]
        [--prompts 300] [--guidance 3.0] [--threads 1] [--latents DIR] [--autoencoder DIR]
        [--tokenizer DIR] [--word2vec DIR|none] [--features DIR] [--images DIR]

Needs the `bench` extra (pip install -c requirements.lock -e '.[bench]') and the pipeline's
digits artifacts (`dvc repro encode_latents@kl_digits feature_net@digits`): the kl_digits
latents and autoencoder, the small BPE tokenizer (and its word2vec vectors), the digits feature
network and images.

Recipe: params.yaml `train_diffusion.digits`, read here with `components.config.build`, so the
benchmark follows the pipeline: its UNet (`DiffusionConfig.unet_config`: in_channels from the
latents, context_dim = the text encoder's dim), text encoder (vocab_size the tokenizer's,
token embeddings from word2vec when `word2vec_init`), schedule, loss and lr. Unlike the stage:
constant lr (no warmup, no cosine), no EMA, eager torch for both (no torch.compile), so that
only the networks differ.

1. Loom: `Denoiser(unet_config, text_config)` as train_diffusion builds it, noised by its
   `NoiseSchedule.add_noise`.
2. diffusers: `UNet2DConditionModel` of the same layout, sample_size = the latent side,
   block_out_channels = base_channels · channel_mult, layers_per_block = blocks_per_level,
   "CrossAttnDownBlock2D" / "CrossAttnUpBlock2D" at the attention_levels ("DownBlock2D" /
   "UpBlock2D" elsewhere), the cross-attention mid block, cross_attention_dim = the text dim,
   norm_num_groups = groups, attention_head_dim = heads (diffusers reads that argument as the
   number of heads: huggingface/diffusers#2011), its defaults otherwise (Stable Diffusion's:
   an additive time embedding where Loom's ResBlocks scale and shift, a GEGLU feed-forward
   where Loom's is GELU). It is conditioned by its own copy of Loom's TextEncoder (the same
   initial weights), trained jointly, through encoder_hidden_states and encoder_attention_mask
   (1 = keep: Loom's padding mask, True = padded, inverted), and noised by
   `DDPMScheduler(num_train_timesteps, "scaled_linear", beta_start, beta_end).add_noise`. The
   two schedules' ᾱ must agree to 1e-6 (asserted); both parameter counts are printed (the
   default layout lands within 1%).

Training: both models start from `torch.manual_seed(0)` (the copy of the text encoder aside)
and are trained in one interleaved loop, step by step, so a load on the machine slows both
alike. Every step draws, once for both, a batch of `--batch` train latents (a seeded
permutation per epoch), t ~ U{0..T-1}, ε ~ N(0, I) and the condition-dropout mask (p from
params, the empty prompt's ids put in), all from seeded CPU generators; the loss, written once,
is DiffusionTask's: mean_b w(t_b) · mean((ε̂_b - ε_b)²), w = Min-SNR-γ from
`prediction.loss_weight` on Loom's `snr`; AdamW at params' lr, weight decay 0. Reported: train
steps/s (the steps after the first 5, which warm up; each model's own step time, forward,
backward and optimizer) and the mean loss of the last 50 steps.

Quality, as evaluate_diffusion: one sample per prompt for the first n = min(`--prompts`, half
the val images) val captions,
each from its own noise (seed 0, the same noise for both models), guidance `--guidance`, Loom's
DPM-Solver++(2M) at 20 steps: `guided_denoiser` over the model's `denoise(x, t, Condition)`
(diffusers': its UNet wrapped as one), `build_sampler`, `sample`, decoded by the autoencoder
(`to_uint8`), batches of 100 prompts, as `DiffusionModel.generate`. FD: `frechet_distance` of
the feature network's features of the samples against those of the next n val images;
prompt accuracy: `heads.agreement(predicted, expected(caption, labels))["all"]`. Printed with
the floor (the prompts' own val images against the reference) and their accuracy.

Samplers, on the Loom model, the same prompts and noise: DDIM (η 0) at 50 steps vs
DPM-Solver++(2M) at 20: FD, prompt accuracy and seconds to draw and decode all prompts.

CPU threads: 1 by default (see benchmarks/attention.py: the 2 cores are shared). The defaults
take about 7 minutes on 2 CPU cores: a train step of batch 64 is about 0.17 s for each model
(1000 of each: 6 minutes), the four samplings of 300 prompts about a minute together.

Targets: Loom >= 1.0x diffusers on train steps/s and on FD (diffusers' FD / Loom's, >= 1.0:
Loom's samples at least as close to the real ones).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from components.config import build
from components.stage import StageInputError
from components.text.bpe.tokenizer import BpeTokenizer
from components.vision.autoencoder.latents import LatentSplit, read_latents
from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import to_uint8
from components.vision.data.store import ImageTable, read_images
from components.vision.data.store import read_meta as read_images_meta
from components.vision.diffusion import prediction
from components.vision.diffusion.config import DiffusionConfig
from components.vision.diffusion.evaluation.frechet import frechet_distance
from components.vision.diffusion.guidance import guided_denoiser
from components.vision.diffusion.samplers import SamplerConfig, build_sampler, sample
from components.vision.diffusion.schedule import NoiseSchedule
from components.vision.diffusion.task import Condition, Denoiser
from components.vision.diffusion.text_encoder import (
    PromptBatch,
    TextEncoder,
    TextEncoderConfig,
    tokenize_prompts,
    word2vec_token_vectors,
)
from components.vision.diffusion.unet import UNetConfig
from components.vision.features.heads import Attributes, agreement, expected
from components.vision.features.saved import FeatureNet

try:
    from diffusers import DDPMScheduler, UNet2DConditionModel
except ImportError as err:
    raise SystemExit(
        f"{err}: the reference is the `bench` extra: "
        ".venv/bin/pip install -c requirements.lock -e '.[bench]'"
    ) from None

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "digits"  # params.yaml train_diffusion.<ENTRY>
MAKE = "dvc repro encode_latents@kl_digits feature_net@digits"
MAKE_WORD2VEC = "dvc repro word2vec@small"
WARMUP = 5  # train steps not timed
LOSS_TAIL = 50  # the mean loss of this many last steps is reported
EVAL_BATCH = 100  # prompts per sampling loop (evaluate_diffusion's batch_size)
SEED = 0
FAST = SamplerConfig("dpmpp_2m", 20)  # evaluate_diffusion's sampler
SLOW = SamplerConfig("ddim", 50, eta=0.0)
SCHEDULE_MATCH = 1e-6  # max |ᾱ Loom - ᾱ diffusers|
PARAMS_MATCH = 0.10  # |diffusers / Loom parameters - 1|, at most
SPEED_TARGET = 1.0  # Loom train steps/s / diffusers', at least
FD_TARGET = 1.0  # diffusers FD / Loom FD, at least


# ---- inputs: the pipeline's artifacts


@dataclass
class Inputs:
    train: LatentSplit  # the latents trained on, with their captions
    latent_shape: tuple[int, int, int]
    autoencoder: Autoencoder
    tokenizer: BpeTokenizer
    token_vectors: tuple[Tensor, list[int]] | None  # word2vec's, for the token embeddings
    features: FeatureNet
    val_images: ImageTable  # prompts (captions) and the FD reference


def require_dirs(args) -> None:
    """Exit naming the first missing input and the command that makes it."""
    for flag in ("latents", "autoencoder", "tokenizer", "features", "images"):
        path = getattr(args, flag)
        if not path.is_dir():
            raise SystemExit(
                f"--{flag} {path}: not found; the pipeline makes the digits artifacts with "
                f"`{MAKE}` (or point --{flag} at another)"
            )


def token_vectors(
    config: DiffusionConfig, directory: Path | None, tokenizer: BpeTokenizer
) -> tuple[Tensor, list[int]] | None:
    """word2vec's token vectors and ids when params say word2vec_init (as train_diffusion)."""
    if not config.word2vec_init or directory is None:
        return None
    if not directory.is_dir():
        raise SystemExit(
            f"--word2vec {directory}: not found; params.yaml train_diffusion.{ENTRY} has "
            f"word2vec_init: true: make it with `{MAKE_WORD2VEC}` (or pass --word2vec none)"
        )
    from components.text.word2vec.vectors import Word2Vec

    vectors = Word2Vec.load(directory)
    if vectors.tokenizer is None or vectors.tokenizer.merges != tokenizer.merges:
        raise SystemExit(f"--word2vec {directory}: vectors over another tokenizer than --tokenizer")
    return word2vec_token_vectors(vectors)


def load_inputs(args, config: DiffusionConfig) -> Inputs:
    require_dirs(args)
    try:
        return read_inputs(args, config)
    except StageInputError as err:  # an artifact of another format or code version
        raise SystemExit(f"{err}\n(re-make the inputs with `{MAKE}`)") from None


def read_inputs(args, config: DiffusionConfig) -> Inputs:
    autoencoder = Autoencoder.load(args.autoencoder)
    train = read_latents(args.latents, "train")
    shape = tuple(int(s) for s in train.latents.shape[1:])
    if shape != tuple(autoencoder.latent_shape):
        raise SystemExit(
            f"--latents {args.latents}: latents {list(shape)}, but --autoencoder makes "
            f"{list(autoencoder.latent_shape)}"
        )
    features = FeatureNet.load(args.features)
    meta = read_images_meta(args.images)
    if (features.size, features.channels) != (meta.size, meta.channels):
        raise SystemExit(
            f"--features {args.features}: for {features.size} px × {features.channels} "
            f"channels, but --images {args.images} holds {meta.size} px × {meta.channels}"
        )
    tokenizer = BpeTokenizer.load(args.tokenizer)
    return Inputs(
        train=train,
        latent_shape=shape,  # type: ignore[arg-type]
        autoencoder=autoencoder,
        tokenizer=tokenizer,
        token_vectors=token_vectors(config, args.word2vec, tokenizer),
        features=features,
        val_images=read_images(args.images / "val.parquet"),
    )


def recipe() -> DiffusionConfig:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return build(DiffusionConfig, params["train_diffusion"][ENTRY], f"train_diffusion.{ENTRY}")


# ---- the two denoisers behind one interface: encode(ids, mask), denoise(x, t, condition)


class DiffusersDenoiser(nn.Module):
    """diffusers' UNet2DConditionModel and a text encoder, behind `Denoiser`'s interface:
    forward(x_t, t, ids, mask) -> ε̂; sampling calls `encode` once and `denoise` per step."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: TextEncoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def encode(self, ids: Tensor, mask: Tensor) -> Condition:
        return Condition(self.text_encoder(ids, mask), mask)

    def denoise(self, x_t: Tensor, t: Tensor, condition: Condition) -> Tensor:
        assert condition.mask is not None
        keep = ~condition.mask  # diffusers: 1 = attend; Loom's mask: True = padding
        return self.unet(
            x_t, t, encoder_hidden_states=condition.context, encoder_attention_mask=keep
        ).sample

    def forward(self, x_t: Tensor, t: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        return self.denoise(x_t, t, self.encode(ids, mask))


def diffusers_unet(unet: UNetConfig, side: int) -> UNet2DConditionModel:
    """UNet2DConditionModel of `unet`'s layout (module docstring)."""
    levels = range(len(unet.channel_mult))
    attended = [level in unet.attention_levels for level in levels]
    return UNet2DConditionModel(
        sample_size=side,
        in_channels=unet.in_channels,
        out_channels=unet.in_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attended),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)
        ),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(unet.widths()),
        layers_per_block=unet.blocks_per_level,
        norm_num_groups=unet.groups,
        cross_attention_dim=unet.context_dim,
        attention_head_dim=unet.heads,  # read as the number of heads (diffusers#2011)
        dropout=unet.dropout,
    )


def build_models(
    config: DiffusionConfig, inputs: Inputs, device: str
) -> tuple[Denoiser, DiffusersDenoiser]:
    """Loom's Denoiser as train_diffusion builds it, and diffusers' UNet with a copy of its
    text encoder (the same initial weights), each from torch.manual_seed(0)."""
    text = replace(config.text, vocab_size=inputs.tokenizer.vocab_size)
    unet = config.unet_config(inputs.latent_shape[0], None)
    torch.manual_seed(SEED)
    loom = Denoiser(unet, text)
    assert loom.text_encoder is not None
    if inputs.token_vectors is not None:
        loom.text_encoder.init_embeddings_from(*inputs.token_vectors)
    torch.manual_seed(SEED)
    reference = DiffusersDenoiser(
        diffusers_unet(unet, inputs.latent_shape[1]), copy.deepcopy(loom.text_encoder)
    )
    return loom.to(device), reference.to(device)


def diffusers_scheduler(config: DiffusionConfig, schedule: NoiseSchedule) -> DDPMScheduler:
    """DDPMScheduler of the params' betas; its ᾱ asserted to be Loom's."""
    s = config.schedule
    assert s.kind == "scaled_linear" and not s.zero_terminal_snr and s.offset_noise == 0
    scheduler = DDPMScheduler(
        num_train_timesteps=s.timesteps,
        beta_schedule="scaled_linear",
        beta_start=s.beta_start,
        beta_end=s.beta_end,
    )
    gap = float((scheduler.alphas_cumprod - schedule.alphas_cumprod).abs().max())
    assert gap <= SCHEDULE_MATCH, f"ᾱ of diffusers and Loom differ by {gap:.2g}"
    return scheduler


# ---- training: the same draws for both, one step of each in turn


@dataclass
class Draw:
    """What one train step uses, drawn once for both models."""

    index: Tensor  # int64 [B] into the train latents
    t: Tensor  # int64 [B]
    noise: Tensor  # [B, c, h, w]
    drop: Tensor  # bool [B]: train on the empty prompt


def draws(n: int, steps: int, batch: int, shape: tuple, timesteps: int, p: float) -> Iterator[Draw]:
    """`steps` draws: batches of seeded epochs of a permutation of the n latents, t, ε and the
    condition dropout from their own seeded CPU generators."""
    order = torch.Generator().manual_seed(SEED)
    rng = torch.Generator().manual_seed(SEED + 1)
    flat = torch.cat([torch.randperm(n, generator=order) for _ in range(steps * batch // n + 1)])
    for index in flat[: steps * batch].split(batch):
        t = torch.randint(0, timesteps, (batch,), generator=rng)
        noise = torch.randn((batch, *shape), generator=rng)
        drop = torch.rand(batch, generator=rng) < p
        yield Draw(index, t, noise, drop)


@dataclass
class Trainee:
    """A model as the loop trains it, with its library's forward process and its record."""

    name: str
    model: nn.Module  # forward(x_t, t, ids, mask) -> ε̂
    add_noise: Callable[[Tensor, Tensor, Tensor], Tensor]  # (x0, ε, t) -> x_t
    optimizer: torch.optim.Optimizer
    seconds: list[float]
    losses: list[float]


def trainee(name: str, model: nn.Module, add_noise, lr: float) -> Trainee:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    return Trainee(name, model.train(), add_noise, optimizer, [], [])


def loss_of(config: DiffusionConfig, schedule: NoiseSchedule, out: Tensor, noise: Tensor, t):
    """DiffusionTask's loss for ε-prediction: mean_b w(t_b) · mean((ε̂_b - ε_b)²)."""
    cfg = config.loss
    mse = (out.float() - noise).pow(2).mean(dim=(1, 2, 3))
    weight = prediction.loss_weight(cfg.prediction, schedule.snr(t), cfg.weighting, cfg.snr_gamma)
    return (weight * mse).mean()


def train_step(one: Trainee, x0: Tensor, draw: Draw, ids: Tensor, mask: Tensor, loss) -> None:
    """One AdamW step of `one` on these draws; its seconds and loss recorded."""
    synchronize(x0.device)
    start = time.perf_counter()
    one.optimizer.zero_grad(set_to_none=True)
    x_t = one.add_noise(x0, draw.noise, draw.t)
    value = loss(one.model(x_t, draw.t, ids, mask), draw.noise, draw.t)
    value.backward()
    one.optimizer.step()
    synchronize(x0.device)
    one.seconds.append(time.perf_counter() - start)
    one.losses.append(float(value.detach()))


def train(
    trainees: list[Trainee],
    latents: Tensor,
    prompts: PromptBatch,
    null: PromptBatch,
    steps: Iterator[Draw],
    loss,
) -> None:
    """Each step's draws to the device, then a step of each model, in turns alternating
    which goes first."""
    device = latents.device
    for step, cpu in enumerate(steps):
        draw = Draw(cpu.index.to(device), cpu.t.to(device), cpu.noise.to(device), cpu.drop)
        drop = cpu.drop.to(device)[:, None]
        ids = torch.where(drop, null.ids, prompts.ids[draw.index])
        mask = torch.where(drop, null.padding_mask, prompts.padding_mask[draw.index])
        x0 = latents[draw.index]
        for one in trainees if step % 2 == 0 else trainees[::-1]:
            train_step(one, x0, draw, ids, mask, loss)


def steps_per_second(one: Trainee) -> float:
    timed = one.seconds[WARMUP:] or one.seconds
    return len(timed) / sum(timed)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- sampling and scoring


@dataclass
class Evaluation:
    """The prompts, their noise and what their samples are scored against."""

    prompts: list[str]
    noise: Tensor  # [N, c, h, w], one per prompt
    wanted: list[Attributes]  # what each prompt's image should show
    reference: np.ndarray  # features of as many other val images
    floor: float  # FD of the prompts' own val images to the reference
    real_accuracy: float  # the val images' prompt accuracy


def evaluation(inputs: Inputs, count: int) -> Evaluation:
    """As evaluate_diffusion: the first n = min(`count`, half the val images) val captions
    are the prompts (each its own noise), the next n val images the FD reference, and the
    prompts' own images against it the floor."""
    val, net = inputs.val_images, inputs.features
    n = min(count, len(val) // 2)
    if n < 2:
        raise SystemExit(f"{len(val)} val images: FD needs two halves of at least 2")
    prompts = val.captions[:n]
    wanted = [expected(net.heads, val.captions[i], val.labels[i]) for i in range(n)]
    features, shown = net.features_and_predict(val.images[:n])
    reference = net.features(val.images[n : 2 * n]).numpy()
    floor = frechet_distance(features.numpy(), reference)
    noise = torch.randn((n, *inputs.latent_shape), generator=torch.Generator().manual_seed(SEED))
    return Evaluation(prompts, noise, wanted, reference, floor, agreement(shown, wanted)["all"])


@torch.no_grad()
def generate(
    model: Denoiser | DiffusersDenoiser,
    inputs: Inputs,
    config: DiffusionConfig,
    run: Evaluation,
    sampler: SamplerConfig,
    guidance: float,
) -> tuple[np.ndarray, float]:
    """uint8 images [N, H, W, C], one per prompt from its noise, and the seconds taken:
    `DiffusionModel.generate`'s path (conditions encoded once, guided_denoiser, build_sampler,
    sample, decode), for either model."""
    model.eval()
    device = next(model.parameters()).device
    text = config.text
    schedule = NoiseSchedule(config.schedule)
    parts = []
    synchronize(device)
    start = time.perf_counter()
    for begin in range(0, len(run.prompts), EVAL_BATCH):
        chunk = run.prompts[begin : begin + EVAL_BATCH]
        batch = tokenize_prompts(inputs.tokenizer, chunk, text.max_tokens, text.truncate)
        null = tokenize_prompts(inputs.tokenizer, [""] * len(chunk), text.max_tokens)
        condition = model.encode(*batch.to(device))
        unconditional = model.encode(*null.to(device))
        denoise = guided_denoiser(model.denoise, condition, unconditional, guidance)
        steps = build_sampler(sampler, schedule, config.loss.prediction)
        latents = sample(steps, denoise, run.noise[begin : begin + EVAL_BATCH].to(device))
        parts.append(to_uint8(inputs.autoencoder.decode(latents)).cpu())
    synchronize(device)
    seconds = time.perf_counter() - start
    model.train()
    return torch.cat(parts).permute(0, 2, 3, 1).numpy(), seconds


def score(net: FeatureNet, images: np.ndarray, run: Evaluation) -> dict[str, float]:
    features, predicted = net.features_and_predict(images)
    return {
        "fd": frechet_distance(features.numpy(), run.reference),
        "prompt_accuracy": agreement(predicted, run.wanted)["all"],
    }


def quality(model, inputs, config, run, sampler, guidance) -> dict[str, float]:
    images, seconds = generate(model, inputs, config, run, sampler, guidance)
    return score(inputs.features, images, run) | {"sample_seconds": seconds}


# ---- the run, and its report


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def sampler_name(sampler: SamplerConfig) -> str:
    return f"{sampler.kind}@{sampler.steps}"


def report_params(loom: Denoiser, reference: DiffusersDenoiser) -> dict[str, int]:
    text = count(reference.text_encoder)
    sizes = {"loom": count(loom), "diffusers": count(reference)}
    match = sizes["diffusers"] / sizes["loom"] - 1
    print(
        f"parameters (UNet + text encoder {text:,}): loom {sizes['loom']:,}, diffusers "
        f"{sizes['diffusers']:,} ({match:+.1%}; within {PARAMS_MATCH:.0%}: "
        f"{verdict(abs(match) <= PARAMS_MATCH)})"
    )
    return sizes


def report_models(rows: dict[str, dict], run: Evaluation) -> None:
    head = f"{'':>10} {'train steps/s':>14} {'loss':>8} {'FD':>9} {'prompt acc':>11} "
    print(head + f"{'sample s':>9}")
    for name, row in rows.items():
        print(
            f"{name:>10} {row['steps_per_s']:>14.3f} {row['loss']:>8.4f} {row['fd']:>9.3f} "
            f"{row['prompt_accuracy']:>11.1%} {row['sample_seconds']:>9.1f}"
        )
    loom, ref = rows["loom"], rows["diffusers"]
    speed, fd = loom["steps_per_s"] / ref["steps_per_s"], ref["fd"] / loom["fd"]
    print(
        f"{'loom/diff':>10} {speed:>13.2f}x {'':>8} {fd:>8.2f}x "
        f"{loom['prompt_accuracy'] - ref['prompt_accuracy']:>+11.1%}   (FD: diffusers / loom; "
        "accuracy: loom - diffusers)"
    )
    print(
        f"{'real':>10} {'':>14} {'':>8} {run.floor:>9.3f} {run.real_accuracy:>11.1%}   "
        "(FD floor: the prompts' own val images; accuracy: theirs)"
    )
    print(
        f"train steps/s: loom {speed:.2f}x diffusers (target >= {SPEED_TARGET:.1f}x: "
        f"{verdict(speed >= SPEED_TARGET)}); FD: diffusers / loom {fd:.2f} (target >= "
        f"{FD_TARGET:.1f}: {verdict(fd >= FD_TARGET)})"
    )


def report_samplers(rows: dict[str, dict]) -> None:
    print(f"{'':>12} {'FD':>9} {'prompt acc':>11} {'seconds':>9}")
    for name, row in rows.items():
        print(
            f"{name:>12} {row['fd']:>9.3f} {row['prompt_accuracy']:>11.1%} "
            f"{row['sample_seconds']:>9.1f}"
        )
    slow, fast = (rows[sampler_name(s)] for s in (SLOW, FAST))
    print(
        f"{sampler_name(FAST)} vs {sampler_name(SLOW)}: "
        f"{slow['sample_seconds'] / fast['sample_seconds']:.2f}x faster, prompt accuracy "
        f"{fast['prompt_accuracy'] - slow['prompt_accuracy']:+.1%}, FD "
        f"{fast['fd'] - slow['fd']:+.3f}"
    )


def tokenized(inputs: Inputs, text: TextEncoderConfig, device: str) -> tuple[PromptBatch, ...]:
    """The train captions' ids and masks, and the empty prompt's [1, L], on the device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captions are short; a long one truncates quietly
        prompts = tokenize_prompts(inputs.tokenizer, inputs.train.captions, text.max_tokens)
    null = tokenize_prompts(inputs.tokenizer, [""], text.max_tokens)
    return prompts.to(device), null.to(device)


def run_training(args, config: DiffusionConfig, inputs: Inputs) -> tuple[dict, dict[str, dict]]:
    schedule = NoiseSchedule(config.schedule)
    scheduler = diffusers_scheduler(config, schedule)
    loom, reference = build_models(config, inputs, args.device)
    sizes = report_params(loom, reference)
    trainees = [
        trainee("loom", loom, schedule.add_noise, config.train.lr),
        trainee("diffusers", reference, scheduler.add_noise, config.train.lr),
    ]
    latents = inputs.train.latents.to(args.device)
    prompts, null = tokenized(inputs, config.text, args.device)
    steps = draws(
        len(latents), args.steps, args.batch, inputs.latent_shape,
        config.schedule.timesteps, config.loss.condition_dropout,
    )  # fmt: skip
    train(trainees, latents, prompts, null, steps, lambda *a: loss_of(config, schedule, *a))
    rows = {
        one.name: {
            "params": sizes[one.name],
            "steps_per_s": steps_per_second(one),
            "loss": sum(one.losses[-LOSS_TAIL:]) / len(one.losses[-LOSS_TAIL:]),
        }
        for one in trainees
    }
    return {"loom": loom, "diffusers": reference}, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: params' train.steps")
    parser.add_argument("--batch", type=int, default=None, help="default: params' batch_size")
    parser.add_argument("--prompts", type=int, default=300, help="val captions sampled")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    data = ROOT / "data"
    parser.add_argument("--latents", type=Path, default=data / "latents/kl_digits")
    parser.add_argument("--autoencoder", type=Path, default=data / "autoencoders/kl_digits")
    parser.add_argument("--tokenizer", type=Path, default=data / "tokenizers/small")
    parser.add_argument(
        "--word2vec",
        type=lambda s: None if s == "none" else Path(s),
        default=data / "word2vec/small",
        help="token vectors when params say word2vec_init; 'none': random embeddings",
    )
    parser.add_argument("--features", type=Path, default=data / "features/digits")
    parser.add_argument("--images", type=Path, default=data / "images/digits")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = recipe()
    args.steps = config.train.steps if args.steps is None else args.steps
    args.batch = config.train.batch_size if args.batch is None else args.batch
    inputs = load_inputs(args, config)
    run = evaluation(inputs, args.prompts)
    print(
        f"device {args.device}, threads {args.threads}, torch {torch.__version__}: "
        f"params.yaml train_diffusion.{ENTRY}, {len(inputs.train)} train latents "
        f"{list(inputs.latent_shape)}; {args.steps} steps of batch {args.batch}, AdamW lr "
        f"{config.train.lr:g} constant, no EMA, same draws for both; word2vec init: "
        f"{inputs.token_vectors is not None}"
    )
    start = time.perf_counter()
    print(
        "\n1. loom Denoiser vs diffusers UNet2DConditionModel + DDPMScheduler (eps, Min-SNR-"
        f"{config.loss.snr_gamma:g}); samples: {len(run.prompts)} val prompts, "
        f"{sampler_name(FAST)}, guidance {args.guidance:g}"
    )
    models, rows = run_training(args, config, inputs)
    samplers: dict[str, dict] = {}
    for name, model in models.items():
        rows[name] |= quality(model, inputs, config, run, FAST, args.guidance)
    report_models(rows, run)

    print(f"\n2. samplers on the loom model, guidance {args.guidance:g}, the same noise")
    samplers[sampler_name(SLOW)] = quality(models["loom"], inputs, config, run, SLOW, args.guidance)
    samplers[sampler_name(FAST)] = {k: rows["loom"][k] for k in ("fd", "prompt_accuracy")}
    samplers[sampler_name(FAST)]["sample_seconds"] = rows["loom"]["sample_seconds"]
    report_samplers(samplers)
    seconds = time.perf_counter() - start
    print(f"\n{seconds:.0f} s")
    results = {
        "device": args.device, "threads": args.threads, "steps": args.steps,
        "batch": args.batch, "prompts": len(run.prompts), "guidance": args.guidance,
        "models": rows, "samplers": samplers,
        "real": {"fd_floor": run.floor, "prompt_accuracy": run.real_accuracy},
        "ratios": {"steps_per_s": rows["loom"]["steps_per_s"] / rows["diffusers"]["steps_per_s"],
                   "fd": rows["diffusers"]["fd"] / rows["loom"]["fd"]},
        "seconds": seconds,
    }  # fmt: skip
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
