"""DETR (Carion et al. 2020) with DAB-DETR's anchor queries and DN-DETR's denoising queries
behind switches; the model knows no I/O and no loss.

    images [B, 3, H, W], mask [B, H, W] -> backbone -> 1x1 proj -> + 2-D sine positions
    -> Transformer encoder (pos added to queries and keys in every layer) -> memory
    -> decoder over N object queries, cross-attending the memory
    -> per decoder layer: class logits [B, N, K+1] and boxes [B, N, 4] (cxcywh in [0, 1])

Queries. `anchors: false` (DETR): N learned query embeddings are the queries' positions, the
content starts at zero, the box head predicts boxes outright. `anchors: true` (DAB-DETR, Liu
et al. 2022): N learned anchor boxes; each layer's query position is an MLP of the anchor's
sine embedding, and the layer predicts a correction in logit space, box = σ(σ⁻¹(anchor) + Δ),
which (detached) is the next layer's anchor. Denoising queries (DN-DETR, Li et al. 2022) are
extra (content, anchor) pairs built from noised ground truth by `denoising.py`, prepended to
the matching queries with a self-attention mask so that neither the matching queries nor
other denoising groups see them. RoI features (`roi_points: p`, with anchors): before each
decoder layer, the encoder's features sampled bilinearly on a p × p grid inside every query's
anchor box are projected and added to its content — box-local evidence, as Sparse R-CNN's
RoI features and Deformable DETR's sampling points give their queries; plain cross-attention
over the whole image is what makes DETR slow to learn to classify.

Outputs: {"logits", "boxes"} of the last layer, "aux": [{"logits", "boxes"}] of the earlier
layers (the auxiliary losses), and "dn" (when denoising queries were given) with the
denoising part of every layer's predictions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from components.detection.backbone import Backbone
from components.detection.config import DetrConfig
from components.nn.positional import SinePosition2d
from components.nn.transformer import DecoderBlock, TransformerConfig, TransformerEncoder


class Mlp(nn.Module):
    """`layers` linear layers with ReLU between: [..., in] -> [..., out]."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int):
        super().__init__()
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def box_sine_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """boxes [..., 4] in [0, 1] -> [..., dim]: each coordinate (scaled by 2π) as dim/4 sines
    and cosines of geometric frequencies (DAB-DETR's positional query)."""
    per = dim // 4
    exponent = torch.arange(0, per, 2, dtype=torch.float32, device=boxes.device)
    freq = temperature ** (exponent / per)  # [per / 2]
    angle = boxes.float()[..., None] * (2 * math.pi) / freq  # [..., 4, per / 2]
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-3)


class Detr(nn.Module):
    def __init__(self, config: DetrConfig, num_classes: int):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        d = config.dim
        self.backbone = Backbone(config.backbone)
        self.input_proj = nn.Conv2d(self.backbone.out_channels, d, 1)
        self.position = SinePosition2d(d, normalize=True)

        def stack(depth: int, **extra) -> TransformerConfig:
            return TransformerConfig(
                dim=d, depth=depth, heads=config.heads, mlp_ratio=config.mlp_ratio,
                dropout=config.dropout, attention=config.attention, position="none",
                gradient_checkpointing=config.gradient_checkpointing, **extra,
            )  # fmt: skip

        self.encoder = TransformerEncoder(stack(config.encoder_layers))
        decoder = stack(config.decoder_layers, decoder_causal=False)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(decoder) for _ in range(decoder.depth))
        self.decoder_norm = nn.LayerNorm(d)
        # softmax: K classes + "no object"; focal: K independent sigmoids
        focal = config.loss.class_loss == "focal"
        self.class_head = nn.Linear(d, num_classes if focal else num_classes + 1)
        self.box_head = Mlp(d, d, 4, 3)
        n = config.num_queries
        if config.anchors:
            # anchors spread over the image (σ⁻¹ of uniform centres, modest sizes)
            generator = torch.Generator().manual_seed(0)
            centres = torch.rand(n, 2, generator=generator)
            sizes = torch.full((n, 2), 0.2)
            self.anchors = nn.Parameter(inverse_sigmoid(torch.cat([centres, sizes], dim=1)))
            self.query_content = nn.Embedding(n, d)
            self.anchor_pos = Mlp(d, d, d, 2)
            # the last layer of the box head starts at zero: a layer's first guess is its anchor
            last = self.box_head.layers[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            p = config.roi_points
            if p:
                self.roi_proj = nn.ModuleList(
                    nn.Sequential(nn.Linear(p * p * d, d), nn.LayerNorm(d))
                    for _ in range(config.decoder_layers)
                )
        else:
            self.query_pos = nn.Embedding(n, d)
        self.label_embedding = nn.Embedding(num_classes + 1, d)  # denoising queries' content

    def encode(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> memory [B, S = h·w, d], its padding mask [B, S], positions [B, S, d]"""
        features = self.input_proj(self.backbone(images))  # [B, d, h, w]
        feature_mask = self.backbone.feature_mask(mask, tuple(features.shape[-2:]))
        pos = self.position(feature_mask, flatten=True).to(features.dtype)
        tokens = features.flatten(2).transpose(1, 2)
        padding = feature_mask.flatten(1)
        memory = self.encoder(tokens, key_padding_mask=padding, pos=pos)
        return memory, padding, pos

    def forward(self, images: Tensor, mask: Tensor, denoising: Any | None = None) -> dict:
        """images float [B, 3, H, W], mask bool [B, H, W] (True = padding); `denoising`: a
        `denoising.DenoisingQueries` (content [B, M, d], anchors [B, M, 4], attn_mask) or
        None. Returns the outputs of the module docstring."""
        memory, padding, pos = self.encode(images, mask)
        b, n = images.shape[0], self.config.num_queries
        attn_mask = None
        if self.config.anchors:
            content = self.query_content.weight.expand(b, n, -1)
            anchors = self.anchors.sigmoid().expand(b, n, 4)
            if denoising is not None:
                content = torch.cat([denoising.content, content], dim=1)
                anchors = torch.cat([denoising.anchors, anchors], dim=1)
                attn_mask = denoising.attn_mask
            fmap = None
            if self.config.roi_points:
                size = self.backbone.feature_size((images.shape[-2], images.shape[-1]))
                fmap = self._feature_map(memory, padding, size)
            layers = self._decode_anchors(content, anchors, memory, padding, pos, attn_mask, fmap)
        else:
            x = memory.new_zeros(b, n, self.config.dim)
            layers = self._decode(x, self.query_pos.weight.expand(b, n, -1), memory, padding, pos)
        outputs = [{"logits": logits, "boxes": boxes} for logits, boxes in layers]
        dn_size = 0 if denoising is None else denoising.content.shape[1]
        result: dict[str, Any] = {
            "logits": outputs[-1]["logits"][:, dn_size:],
            "boxes": outputs[-1]["boxes"][:, dn_size:],
            "aux": [{k: v[:, dn_size:] for k, v in o.items()} for o in outputs[:-1]],
        }
        if denoising is not None:
            result["dn"] = [{k: v[:, :dn_size] for k, v in o.items()} for o in outputs]
        return result

    def _decode(self, x, query_pos, memory, padding, pos) -> list[tuple[Tensor, Tensor]]:
        out = []
        for block in self.decoder_blocks:
            x = block(x, memory, None, padding, query_pos, pos)
            h = self.decoder_norm(x)
            out.append((self.class_head(h), self.box_head(h).sigmoid()))
        return out

    @staticmethod
    def _feature_map(memory: Tensor, padding: Tensor, size: tuple[int, int]) -> tuple[Tensor, ...]:
        """memory [B, S, d] -> (map [B, d, h, w], the unpadded share of each side [B, 2] as
        (w, h)): anchors are relative to the unpadded image, the map holds the padding too."""
        (h, w), b = size, memory.shape[0]
        fmap = memory.transpose(1, 2).reshape(b, -1, h, w)
        valid = ~padding.view(b, h, w)
        share = torch.stack([valid[:, 0, :].sum(1) / w, valid[:, :, 0].sum(1) / h], dim=1)
        return fmap, share.to(memory.dtype)

    def roi_features(self, fmap: tuple[Tensor, ...], anchors: Tensor) -> Tensor:
        """Bilinear samples of the map on a p × p grid inside each anchor box:
        anchors [B, N, 4] cxcywh -> [B, N, p·p·d]."""
        features, share = fmap
        p = self.config.roi_points
        steps = (torch.arange(p, device=anchors.device, dtype=anchors.dtype) + 0.5) / p - 0.5
        gy, gx = torch.meshgrid(steps, steps, indexing="ij")
        offsets = torch.stack([gx, gy], dim=-1).view(1, 1, p * p, 2)  # in box units
        centre, size = anchors[..., None, :2], anchors[..., None, 2:]
        points = (centre + offsets * size) * share[:, None, None, :]  # [B, N, p·p, 2] in [0, 1]
        sampled = nn.functional.grid_sample(
            features, points * 2 - 1, mode="bilinear", align_corners=False
        )  # [B, d, N, p·p]
        return sampled.permute(0, 2, 3, 1).flatten(2)

    def _decode_anchors(self, x, anchors, memory, padding, pos, attn_mask, fmap=None):
        out = []
        for i, block in enumerate(self.decoder_blocks):
            if fmap is not None:
                x = x + self.roi_proj[i](self.roi_features(fmap, anchors))
            query_pos = self.anchor_pos(box_sine_embedding(anchors, self.config.dim)).to(x.dtype)
            if attn_mask is None:
                x = block(x, memory, None, padding, query_pos, pos)
            else:
                x = block(x, memory, None, padding, query_pos, pos, self_attn_mask=attn_mask)
            h = self.decoder_norm(x)
            boxes = (inverse_sigmoid(anchors) + self.box_head(h)).sigmoid()
            out.append((self.class_head(h), boxes))
            anchors = boxes.detach()  # DAB: each layer refines the last one's boxes
        return out
