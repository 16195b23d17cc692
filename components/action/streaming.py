"""Online inference: a detector fed one frame's features at a time, in constant memory.

    online = OnlineDetector(model)
    for feature in stream:                 # [D] each
        probs = online.step(feature)       # [K]: the current frame's class probabilities

A recurrent model carries its hidden state; OadTR keeps a ring buffer of its T latest
features (the frames before the stream's start are padding, masked). `offline` computes what
`step` gives for every frame of a whole stream at once, batched: for a recurrent model one
pass over the stream, for OadTR every frame's window (`windows`); the two agree (tested), so
the batched form is what evaluation runs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from components.action.models import OadTR, RecurrentDetector, State


def windows(features: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """features [N, D] -> (windows [N, length, D], padding [N, length]): row t holds frames
    t-length+1..t (zeros, padding True, before frame 0)."""
    n, d = features.shape
    padded = torch.cat([features.new_zeros(length - 1, d), features])
    stacked = padded.unfold(0, length, 1).transpose(1, 2)  # [N, length, D]
    position = torch.arange(n)[:, None] - (length - 1) + torch.arange(length)[None]
    return stacked, position < 0


class OnlineDetector:
    def __init__(self, model: nn.Module):
        if not isinstance(model, (RecurrentDetector, OadTR)):
            raise TypeError(f"{type(model).__name__}: not an online action detector")
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next step is a first frame."""
        self.state: State = None
        self.seen = 0
        if isinstance(self.model, OadTR):
            window, dim = self.model.config.window, self.model.input_dim
            device = next(self.model.parameters()).device
            self.buffer = torch.zeros(window, dim, device=device)

    @torch.no_grad()
    def step(self, feature: Tensor) -> Tensor:
        """feature [D] -> class probabilities [K] of this frame, from it and the past only."""
        model = self.model
        if isinstance(model, RecurrentDetector):
            logits, self.state = model(feature.view(1, 1, -1), self.state)
            self.seen += 1
            return logits[0, -1].softmax(-1)
        window = model.config.window
        self.buffer[self.seen % window] = feature  # the ring: slot of frame `seen`
        self.seen += 1
        order = (torch.arange(window) + self.seen) % window  # oldest first, current last
        padding = torch.arange(window) < window - self.seen  # before the stream started
        current, _ = model(self.buffer[order][None], padding[None].to(self.buffer.device))
        return current[0].softmax(-1)


@torch.no_grad()
def offline(model: nn.Module, features: Tensor, batch: int = 256) -> Tensor:
    """features [N, D] of one stream -> probabilities [N, K], frame t's from frames <= t (what
    `OnlineDetector.step` returns frame by frame)."""
    model.eval()
    if isinstance(model, RecurrentDetector):
        logits, _ = model(features[None])
        return logits[0].softmax(-1)
    assert isinstance(model, OadTR)
    stacked, padding = windows(features, model.config.window)
    parts = [
        model(stacked[i : i + batch], padding[i : i + batch].to(features.device))[0]
        for i in range(0, len(stacked), batch)
    ]
    return torch.cat(parts).softmax(-1)
