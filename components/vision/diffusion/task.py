"""The training engine's `Task` for latent diffusion: denoising score matching on scaled latents.

Per batch of latents x0 [B, c, h, w] and their conditions:

    t ~ U{0..T-1},  eps ~ N(0, I) (+ offset noise),  x_t = √ᾱ_t x0 + √(1-ᾱ_t) eps
    condition -> the null condition with probability `condition_dropout` (per sample)
    out  = denoiser(x_t, t, condition)
    loss = mean_b w(t_b) · mean((out_b - target_b)²)   target: eps, v or x0; w: uniform or
                                                      Min-SNR-γ for that prediction type

The random draws (t, eps, the dropout) come from torch's global RNG on the device: the engine
seeds it, restores it on resume and isolates validation from it, so a resumed run draws what an
uninterrupted one would, and every validation draws the same.

What the engine trains is `Denoiser`: the UNet and, for text conditions, the text encoder, one
module whose `forward` runs both (so DDP sees every parameter through forward). Prompts are
tokenized once, when the task is made: batches carry ids and padding masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from components.vision.diffusion import prediction
from components.vision.diffusion.config import DiffusionConfig
from components.vision.diffusion.guidance import drop_condition
from components.vision.diffusion.schedule import NoiseSchedule
from components.vision.diffusion.text_encoder import PromptBatch, TextEncoder, TextEncoderConfig
from components.vision.diffusion.unet import UNet, UNetConfig


@dataclass
class Condition:
    """What a denoiser is conditioned on, batched: a text context with its padding mask, or
    class labels (`guidance.batch_conditions` joins two along the batch for guidance)."""

    context: Tensor | None = None  # [B, L, dim] (encoded text)
    mask: Tensor | None = None  # bool [B, L], True = padding
    labels: Tensor | None = None  # int64 [B]

    def repeat(self, n: int) -> Condition:
        """Each entry repeated n times in place: [c0, c0, .., c1, c1, ..] ([B·n, ...])."""

        def rep(a: Tensor | None) -> Tensor | None:
            return None if a is None else a.repeat_interleave(n, dim=0)

        return Condition(rep(self.context), rep(self.mask), rep(self.labels))


class Denoiser(nn.Module):
    """The UNet and (text) its text encoder.

    forward(x_t [B, c, h, w], t [B], ids [B, L] | None, mask [B, L] | None, labels [B] | None)
        -> [B, c, h, w], the prediction the loss names.
    Sampling encodes the prompts once (`encode`) and calls `denoise` at every step.
    """

    def __init__(self, unet: UNetConfig, text: TextEncoderConfig | None):
        super().__init__()
        self.unet = UNet(unet)
        self.text_encoder = TextEncoder(text) if text is not None else None

    def encode(self, ids: Tensor, mask: Tensor) -> Condition:
        assert self.text_encoder is not None, "a label-conditioned denoiser has no text encoder"
        return Condition(self.text_encoder(ids, mask), mask)

    def denoise(self, x_t: Tensor, t: Tensor, condition: Condition) -> Tensor:
        return self.unet(
            x_t, t, context=condition.context, context_mask=condition.mask, labels=condition.labels
        )

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        ids: Tensor | None = None,
        mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        if self.text_encoder is not None:
            if ids is None or mask is None:
                raise ValueError("a text-conditioned denoiser needs token ids and their mask")
            return self.denoise(x_t, t, self.encode(ids, mask))
        return self.denoise(x_t, t, Condition(labels=labels))


class LatentBatch(NamedTuple):
    """A batch (a NamedTuple: the engine moves each tensor to the device)."""

    latents: Tensor  # float32 [B, c, h, w]
    ids: Tensor | None  # int64 [B, L]
    mask: Tensor | None  # bool [B, L], True = padding
    labels: Tensor | None  # int64 [B]


Row = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]  # latent, ids, mask, label


class LatentConditions(Dataset):
    """latents [N, c, h, w] with, per row, token ids and mask (text) or a label."""

    def __init__(
        self, latents: Tensor, prompts: PromptBatch | None = None, labels: Tensor | None = None
    ):
        self.latents, self.prompts, self.labels = latents, prompts, labels

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def __getitem__(self, index: int) -> Row:
        prompts, labels = self.prompts, self.labels
        return (
            self.latents[index],
            None if prompts is None else prompts.ids[index],
            None if prompts is None else prompts.padding_mask[index],
            None if labels is None else labels[index],
        )


class DiffusionTask:
    def __init__(
        self,
        config: DiffusionConfig,
        unet: UNetConfig,
        text: TextEncoderConfig | None,
        train: LatentConditions,
        val: LatentConditions | None,
        null_prompt: PromptBatch | None = None,
        token_vectors: tuple[Tensor, list[int]] | None = None,
    ):
        """unet, text: the resolved network configs (channels and condition set from the
        data: `DiffusionConfig.unet_config`). null_prompt: the empty prompt's ids and mask
        [1, L] (text), what condition dropout puts in. token_vectors: word2vec vectors [N, d]
        and their token ids, copied into a new model's token embeddings (a resumed run loads
        its checkpoint over them)."""
        self.config = config
        self.unet, self.text = unet, text
        self.schedule = NoiseSchedule(config.schedule)
        self.train_data: Dataset = train
        self.val_data: Dataset | None = val if val is not None and len(val) else None
        self.null_prompt = null_prompt
        self.token_vectors = token_vectors
        if text is not None and null_prompt is None:
            raise ValueError("a text-conditioned task needs the null prompt's ids")

    def model(self) -> Denoiser:
        denoiser = Denoiser(self.unet, self.text)
        if self.token_vectors is not None:
            if denoiser.text_encoder is None:
                raise ValueError("word2vec vectors for a denoiser without a text encoder")
            denoiser.text_encoder.init_embeddings_from(*self.token_vectors)
        return denoiser

    def collate(self, rows: list[Row]) -> LatentBatch:
        latents, ids, mask, labels = zip(*rows, strict=True)

        def stack(column: tuple[Tensor | None, ...]) -> Tensor | None:
            return None if column[0] is None else torch.stack(column)  # type: ignore[arg-type]

        return LatentBatch(torch.stack(latents), stack(ids), stack(mask), stack(labels))

    def loss(
        self, model: nn.Module, batch: LatentBatch
    ) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        cfg = self.config.loss
        x0 = batch.latents
        b, device = x0.shape[0], x0.device
        t = torch.randint(0, self.config.schedule.timesteps, (b,), device=device)
        noise = self.schedule.sample_noise(x0)
        x_t = self.schedule.add_noise(x0, noise, t)
        alpha_bar = self.schedule.alpha_bar(t)
        ids, mask, labels = self._dropped(batch)
        out = model(x_t, t, ids, mask, labels)
        target = prediction.target(cfg.prediction, x0, noise, alpha_bar)
        mse = (out.float() - target).pow(2).mean(dim=(1, 2, 3))  # [B]
        weight = prediction.loss_weight(
            cfg.prediction, self.schedule.snr(t), cfg.weighting, cfg.snr_gamma
        )
        return (weight * mse).mean(), {"mse": mse.mean()}

    def _dropped(self, batch: LatentBatch) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """The batch's conditions with each replaced by the null one with P = dropout."""
        p = self.config.loss.condition_dropout
        ids, mask, labels = batch.ids, batch.mask, batch.labels
        if p == 0:
            return ids, mask, labels
        b, device = batch.latents.shape[0], batch.latents.device
        drop = drop_condition(b, p, device=device)  # [B]
        if ids is not None and mask is not None:
            assert self.null_prompt is not None
            null_ids, null_mask = self.null_prompt.ids.to(device), self.null_prompt.padding_mask
            ids = torch.where(drop[:, None], null_ids, ids)
            mask = torch.where(drop[:, None], null_mask.to(device), mask)
        if labels is not None:
            null_label = self.unet.num_classes
            assert null_label is not None
            labels = torch.where(drop, torch.full_like(labels, null_label), labels)
        return ids, mask, labels
