"""Online inference: a detector fed one frame's features at a time, in constant memory.

    online = OnlineDetector(model)
    for feature in stream:                 # [D] each
        probs = online.step(feature)       # [K]: the current frame's class probabilities

A recurrent model carries its hidden state; OadTR keeps a ring buffer of its T latest frames'
projections (each made once; the frames before the stream's start are padding, masked, and
once T frames have come no mask is needed: the fused attention kernel runs); causal OadTR carries
its blocks' running sums. `offline` computes what `step` gives for every frame of a whole
stream at once, batched: for a recurrent model or causal OadTR one pass over the stream, for
OadTR every frame's window (`windows`); the two agree (tested), so the batched form is what
evaluation runs.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from components.action.causal_oadtr import CausalOadTR, CausalState
from components.action.models import DETECTORS, OadTR, RecurrentDetector, State
from components.nn.attention import LinearAttentionState


def windows(features: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """features [N, D] -> (windows [N, length, D], padding [N, length]): row t holds frames
    t-length+1..t (zeros, padding True, before frame 0)."""
    n, d = features.shape
    padded = torch.cat([features.new_zeros(length - 1, d), features])
    stacked = padded.unfold(0, length, 1).transpose(1, 2)  # [N, length, D]
    position = torch.arange(n)[:, None] - (length - 1) + torch.arange(length)[None]
    return stacked, position < 0


class _CurrentLogits(nn.Module):
    """OadTR's current-frame head alone over a full window of projections (what `trace`
    freezes: the future logits are a training signal, not a streaming output)."""

    def __init__(self, model: OadTR):
        super().__init__()
        self.model = model

    def forward(self, embedded: Tensor) -> Tensor:
        return self.model.from_embedded(embedded)[0]


class _CausalStep(nn.Module):
    """CausalOadTR.step on flat state tensors (what `trace` freezes): (feature [1, D], the
    encoder's and decoder's sums, 2 per block) -> (current logits [1, K], the new sums)."""

    def __init__(self, model: CausalOadTR):
        super().__init__()
        self.model = model
        self.encoder_blocks = len(model.encoder.blocks)

    def forward(self, feature: Tensor, flat: tuple[Tensor, ...]) -> tuple[Tensor, tuple]:
        current, _, state = self.model.step(feature, unflatten(flat, self.encoder_blocks))
        return current, flatten(state)


def flatten(state: CausalState) -> tuple[Tensor, ...]:
    return tuple(t for s in (*state.encoder, *state.decoder) for t in s)


def unflatten(flat: tuple[Tensor, ...], encoder_blocks: int) -> CausalState:
    sums = [LinearAttentionState(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return CausalState(sums[:encoder_blocks], sums[encoder_blocks:])


def _trace(module: nn.Module, *example) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.compile, but measured here (1 core,
        # OadTR at T = 64) it is the faster one: 2,190 frames/s against compile's 1,580 after
        # a 14 s compile. The tracer's shape-check warnings are moot: the shapes are fixed.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.freeze(torch.jit.trace(module.eval(), example))


class OnlineDetector:
    """`traced` (OadTR, causal OadTR; the default): once T frames have come (causal: from the
    second frame), each step runs the network as a TorchScript graph traced and frozen on the
    first such step — the same operations
    (outputs equal, tested) without the Python dispatch of ~100 small ops per step, which is
    most of a step's cost on one CPU core at T = 64 (1,360 -> 2,190 frames/s). The graph
    holds the weights as they were then: make a new detector after changing them."""

    def __init__(self, model: nn.Module, traced: bool = True):
        if not isinstance(model, DETECTORS):
            raise TypeError(f"{type(model).__name__}: not an online action detector")
        self.model = model.eval()
        self.traced = traced and isinstance(model, (OadTR, CausalOadTR))
        self._graph: torch.jit.ScriptModule | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next step is a first frame."""
        self.state: State = None  # a recurrent model's
        self.sums: CausalState | None = None  # causal OadTR's
        self.seen = 0
        if isinstance(self.model, OadTR):
            window, dim = self.model.config.window, self.model.config.dim
            device = next(self.model.parameters()).device
            # Each frame's projection is written twice, at slots i and i + T, so the window
            # (oldest first, current last) is always the contiguous slice [i + 1, i + 1 + T).
            self.buffer = torch.zeros(2 * window, dim, device=device)

    @torch.inference_mode()
    def step(self, feature: Tensor) -> Tensor:
        """feature [D] -> class probabilities [K] of this frame, from it and the past only."""
        model = self.model
        if isinstance(model, RecurrentDetector):
            logits, self.state = model(feature.view(1, 1, -1), self.state)
            self.seen += 1
            return logits[0, -1].softmax(-1)
        if isinstance(model, CausalOadTR):
            x = feature.view(1, -1)
            if self.sums is None or not self.traced:
                current, _, self.sums = model.step(x, self.sums)
            else:
                flat = flatten(self.sums)
                if self._graph is None:
                    self._graph = _trace(_CausalStep(model), x, flat)
                current, flat = self._graph(x, flat)
                self.sums = unflatten(flat, len(model.encoder.blocks))
            self.seen += 1
            return current[0].softmax(-1)
        window = model.config.window
        slot = self.seen % window
        self.buffer[slot] = self.buffer[slot + window] = model.embed(feature)
        self.seen += 1
        embedded = self.buffer[slot + 1 : slot + 1 + window][None]  # [1, T, dim]
        if self.seen < window:  # frames before the stream started: padding, masked
            padding = (torch.arange(window) < window - self.seen)[None].to(self.buffer.device)
            current, _ = model.from_embedded(embedded, padding)
        elif self.traced:
            if self._graph is None:
                self._graph = _trace(_CurrentLogits(model), embedded.clone())
            current = self._graph(embedded)
        else:
            current, _ = model.from_embedded(embedded)
        return current[0].softmax(-1)


@torch.no_grad()
def offline(model: nn.Module, features: Tensor, batch: int = 256) -> Tensor:
    """features [N, D] of one stream -> probabilities [N, K], frame t's from frames <= t (what
    `OnlineDetector.step` returns frame by frame)."""
    model.eval()
    if isinstance(model, (RecurrentDetector, CausalOadTR)):
        logits = model(features[None])[0]
        return logits[0].softmax(-1)
    assert isinstance(model, OadTR)
    stacked, padding = windows(features, model.config.window)
    parts = [
        model(stacked[i : i + batch], padding[i : i + batch].to(features.device))[0]
        for i in range(0, len(stacked), batch)
    ]
    return torch.cat(parts).softmax(-1)
