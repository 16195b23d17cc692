"""The online action detectors: recurrent baselines and OadTR. No I/O.

    RecurrentDetector   features [B, T, D] (+ state) -> logits [B, T, K] (+ state): frame t's
                        logits depend on frames <= t only (a recurrent network is causal)
    OadTR               windows [B, T, D] (the T latest features, the current one last)
                        -> (current logits [B, K], future logits [B, ℓ, K])

OadTR, as in Wang et al. 2021: the window's features are projected to `dim`, a learnable task
token is put before them, learned positions are added to all T + 1, and a Transformer encoder
(`components.nn`, softmax or linear attention) runs over them; the task token's output
summarises the history. ℓ learned queries decode the encoder's memory (self-attention among
them, cross-attention to the memory) into the classes of frames t+1..t+ℓ: the model is taught
to anticipate. The current frame's class is read from [task token output; the mean of the
decoder outputs], concatenated.

`network(kind, ...)` builds any of them from its config, `causal_oadtr.CausalOadTR` (OadTR
with `causal: true`: the streaming form) included.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from components.action.causal_oadtr import CausalOadTR
from components.action.config import OadTRConfig, RecurrentConfig
from components.action.standardize import FeatureScale
from components.nn.transformer import TransformerConfig, TransformerDecoder, TransformerEncoder

State = Tensor | tuple[Tensor, Tensor] | None  # h (rnn, gru) or (h, c) (lstm)
CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentDetector(nn.Module):
    def __init__(self, config: RecurrentConfig, input_dim: int, num_classes: int):
        super().__init__()
        self.config, self.input_dim, self.num_classes = config, input_dim, num_classes
        self.embed = nn.Sequential(
            FeatureScale(input_dim), nn.Linear(input_dim, config.hidden), nn.ReLU()
        )
        dropout = config.dropout if config.layers > 1 else 0.0
        self.cell = CELLS[config.cell](
            config.hidden, config.hidden, config.layers, batch_first=True, dropout=dropout
        )
        self.classify = nn.Linear(config.hidden, num_classes)

    def forward(self, features: Tensor, state: State = None) -> tuple[Tensor, State]:
        """features [B, T, D], state from the previous call (None: zeros) -> (logits [B, T, K],
        the state after frame T-1)."""
        out, state = self.cell(self.embed(features), state)
        return self.classify(out), state


def _transformer(config: OadTRConfig, depth: int, **options) -> TransformerConfig:
    return TransformerConfig(
        dim=config.dim,
        depth=depth,
        heads=config.heads,
        attention=config.attention,
        dropout=config.dropout,
        gradient_checkpointing=config.gradient_checkpointing,
        **options,
    )


class OadTR(nn.Module):
    def __init__(self, config: OadTRConfig, input_dim: int, num_classes: int):
        super().__init__()
        self.config, self.input_dim, self.num_classes = config, input_dim, num_classes
        dim = config.dim
        self.embed = nn.Sequential(FeatureScale(input_dim), nn.Linear(input_dim, dim))
        self.task_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.task_token, std=0.02)
        self.encoder = TransformerEncoder(
            _transformer(
                config, config.encoder_layers, position="learned", max_len=config.window + 1
            )
        )
        self.decoder: TransformerDecoder | None = None
        if config.future:
            self.queries = nn.Parameter(torch.zeros(config.future, dim))
            nn.init.normal_(self.queries, std=0.02)
            self.decoder = TransformerDecoder(
                _transformer(config, config.decoder_layers, position="none", decoder_causal=False)
            )
            self.classify_future = nn.Linear(dim, num_classes)
        self.classify = nn.Linear(2 * dim if config.future else dim, num_classes)

    def forward(
        self, windows: Tensor, padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """windows [B, T, D] (frame t last), padding_mask bool [B, T] (True: no frame there,
        before the stream's start) -> (current logits [B, K], future logits [B, ℓ, K] or
        None without a decoder)."""
        if windows.shape[1] != self.config.window:
            raise ValueError(
                f"windows of {windows.shape[1]} frames: the model's window is {self.config.window}"
            )
        return self.from_embedded(self.embed(windows), padding_mask)

    def from_embedded(
        self, embedded: Tensor, padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """`forward` after the per-frame projection: embedded [B, T, dim] = embed(windows).
        Streaming keeps each frame's projection, made once, instead of its features."""
        b = embedded.shape[0]
        tokens = torch.cat([self.task_token.expand(b, 1, -1), embedded], dim=1)
        mask = None
        if padding_mask is not None:
            keep_task = torch.zeros(b, 1, dtype=torch.bool, device=embedded.device)
            mask = torch.cat([keep_task, padding_mask], dim=1)
        memory = self.encoder(tokens, key_padding_mask=mask)  # [B, T + 1, dim]
        task = memory[:, 0]  # what the classifier reads: the task token's output
        if self.decoder is None:
            return self.classify(task), None
        queries = self.queries.expand(b, -1, -1)
        decoded = self.decoder(queries, memory, context_padding_mask=mask)  # [B, ℓ, dim]
        current = self.classify(torch.cat([task, decoded.mean(dim=1)], dim=1))
        return current, self.classify_future(decoded)


def network(
    kind: str, config: RecurrentConfig | OadTRConfig, input_dim: int, num_classes: int
) -> nn.Module:
    """The detector of `kind` ("recurrent" | "oadtr"): RecurrentDetector, OadTR, or
    CausalOadTR for an OadTR config with causal: true."""
    if kind == "recurrent":
        assert isinstance(config, RecurrentConfig)
        return RecurrentDetector(config, input_dim, num_classes)
    assert isinstance(config, OadTRConfig)
    if config.causal:
        return CausalOadTR(config, input_dim, num_classes)
    return OadTR(config, input_dim, num_classes)


DETECTORS = (RecurrentDetector, OadTR, CausalOadTR)


def feature_scale(model: nn.Module) -> FeatureScale:
    """The detector's first layer: its features' standardisation (fit on the train frames)."""
    embed = model.embed
    assert isinstance(embed, nn.Sequential) and isinstance(embed[0], FeatureScale)
    return embed[0]
