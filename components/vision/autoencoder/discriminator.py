"""PatchGAN discriminator (Isola et al. 2017, as in taming-transformers and LDM): a conv net
whose output is a map of real/fake logits, one per overlapping image patch.

    x [B, C, H, W] -> conv4x4/2, LeakyReLU(0.2)
                   -> (layers − 1) × [conv4x4/2, GroupNorm, LeakyReLU]
                   -> conv4x4/1, GroupNorm, LeakyReLU -> conv4x4/1 -> logits [B, 1, h', w']

GroupNorm instead of pix2pix's BatchNorm: a logit does not depend on the rest of the batch,
so the real and fake passes (and DDP ranks) need no shared batch statistics.
"""

from __future__ import annotations

from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            blocks += [nn.Conv2d(width, out, 4, stride=2, padding=1), _norm(out), nn.LeakyReLU(0.2)]
            width = out
        out = channels * min(2**layers, 8)
        blocks += [nn.Conv2d(width, out, 4, stride=1, padding=1), _norm(out), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(out, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():  # DCGAN init, as pix2pix
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] in [-1, 1] -> patch logits [B, 1, h', w']."""
        return self.net(x)
