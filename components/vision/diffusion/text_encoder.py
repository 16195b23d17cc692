"""The text encoder that conditions the UNet: prompts -> BPE ids -> Transformer -> context.

    prompts (B strings) -> ids int64 [B, L], padding_mask bool [B, L]     L = max_tokens
    ids -> token embedding [B, L, dim] + positions -> TransformerEncoder -> context [B, L, dim]

Token ids come from Loom's byte-level BPE (`components.text.bpe.tokenizer.BpeTokenizer`,
`encode_ordinary`: a special token's string in a prompt is plain text). Every prompt starts with
a start token of id V = the tokenizer's vocab_size, one row past the tokenizer's ids in the
embedding table (V + 1 rows). The empty prompt "" is then [start] alone: the null condition of
classifier-free guidance still has one real token to attend to, so its context is finite (a
fully padded sequence would leave cross-attention nothing to see), and the start token's
learned embedding is what "no text" means to the UNet. Padded positions (True in the mask)
are ignored by the encoder's attention, set to 0 in the context, and must be passed on as the
UNet's `context_mask`.

A prompt of more than max_tokens - 1 tokens is truncated to its first max_tokens - 1 with a
warning (`truncate: warn`) or refused with a ValueError (`truncate: error`).

Word2vec initialisation (`TextEncoder.init_embeddings_from`): a token-unit `Word2Vec`
(`components.text.word2vec.vectors`) has one input vector [d] per kept token id
(`word2vec_token_vectors`). Each is scaled by one common factor, so the copied entries have the
standard deviation the embedding table had (0.02 at init, as GPT-2), and written into the first
min(d, dim) columns of its token's row: truncation when d > dim (word2vec's coordinates have no
order, so the first dim of them are as good as any), the remaining columns keep their random
init when d < dim. Rows of tokens word2vec did not keep, and the start token's, are unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor, nn

from components.config import require
from components.nn.attention import AttentionKind
from components.nn.transformer import TransformerConfig, TransformerEncoder

if TYPE_CHECKING:
    from components.text.bpe.tokenizer import BpeTokenizer
    from components.text.word2vec.vectors import Word2Vec

Truncate = Literal["warn", "error"]
EMBEDDING_STD = 0.02  # token embedding init, as GPT-2 (and `PositionEmbedding`'s learned table)


@dataclass
class TextEncoderConfig:
    vocab_size: int | None = None  # the tokenizer's ids 0..V-1; None = the tokenizer's size
    dim: int = 128  # context width: the UNet's context_dim
    depth: int = 2
    heads: int = 4
    max_tokens: int = 32  # context length L, the start token included
    truncate: Truncate = "warn"  # a longer prompt: truncate with a warning, or raise
    attention: AttentionKind = "softmax"
    position: Literal["learned", "sinusoidal"] = "learned"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(
            self.vocab_size is None or _positive_int(self.vocab_size),
            "vocab_size",
            self.vocab_size,
            "an int >= 1 or null (= the tokenizer's)",
        )
        require(
            _positive_int(self.max_tokens) and self.max_tokens >= 2,
            "max_tokens",
            self.max_tokens,
            "an int >= 2 (the start token and at least one prompt token)",
        )
        require(self.truncate in ("warn", "error"), "truncate", self.truncate, "'warn' or 'error'")
        self.transformer_config()  # checks dim, depth, heads, attention, position, dropout

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            attention=self.attention,
            dropout=self.dropout,
            position=self.position,
            max_len=self.max_tokens,
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class PromptBatch(NamedTuple):
    ids: Tensor  # int64 [B, L]: start token, the prompt's tokens, then pad_id
    padding_mask: Tensor  # bool [B, L], True = padded

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(self.ids.to(device), self.padding_mask.to(device))


class TextContext(NamedTuple):
    context: Tensor  # float [B, L, dim], 0 at padded positions: the UNet's context
    padding_mask: Tensor  # bool [B, L], True = padded: the UNet's context_mask


def tokenize_prompts(
    tokenizer: BpeTokenizer,
    prompts: Sequence[str],
    max_tokens: int,
    truncate: Truncate = "warn",
    pad_id: int = 0,
) -> PromptBatch:
    """Prompts -> ids int64 [B, max_tokens], padding_mask bool [B, max_tokens].

    Row i is [V, *encode_ordinary(prompts[i]), pad_id, ...] with V = tokenizer.vocab_size (the
    start token); the mask is False on the start and prompt tokens. With max_tokens = 4 and a
    tokenizer of bytes only (no merges, V = 256: "ab" -> [97, 98]):

        ["ab", ""] -> ids [[256, 97, 98, 0], [256, 0, 0, 0]],
                      padding_mask [[F, F, F, T], [F, T, T, T]]

    pad_id only fills padded positions (ignored wherever the mask is passed); it must be an
    embedding row, 0..V.
    """
    start = tokenizer.vocab_size
    if not 0 <= pad_id <= start:
        raise ValueError(f"pad_id = {pad_id}: expected an id in 0..{start} (the start token)")
    if max_tokens < 2:
        raise ValueError(f"max_tokens = {max_tokens}: expected >= 2 (start token + a token)")
    ids = torch.full((len(prompts), max_tokens), pad_id, dtype=torch.int64)
    padding_mask = torch.ones(len(prompts), max_tokens, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens = tokenizer.encode_ordinary(prompt)
        if len(tokens) > max_tokens - 1:
            message = (
                f"prompt {row} ({_excerpt(prompt)}) has {len(tokens)} tokens, more than the "
                f"{max_tokens - 1} that max_tokens = {max_tokens} leaves after the start token"
            )
            if truncate == "error":
                raise ValueError(message)
            warnings.warn(f"{message}: truncated to its first {max_tokens - 1}", stacklevel=2)
            tokens = tokens[: max_tokens - 1]
        sequence = [start, *tokens]
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.int64)
        padding_mask[row, : len(sequence)] = False
    return PromptBatch(ids, padding_mask)


def _excerpt(prompt: str, limit: int = 60) -> str:
    return repr(prompt if len(prompt) <= limit else prompt[:limit] + "...")


def check_vocabulary(source: TextEncoderConfig | TextEncoder, tokenizer: BpeTokenizer) -> None:
    """Raise a ValueError when the tokenizer's vocabulary size is not the encoder's (a config
    with vocab_size null takes any tokenizer)."""
    config = source.config if isinstance(source, TextEncoder) else source
    if config.vocab_size is not None and config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"the tokenizer has vocab_size {tokenizer.vocab_size} but the text encoder was made "
            f"for vocab_size {config.vocab_size}: its token ids would mean other tokens"
        )


def build_text_encoder(config: TextEncoderConfig, tokenizer: BpeTokenizer) -> TextEncoder:
    """A `TextEncoder` for this tokenizer; vocab_size null in the config becomes its size."""
    check_vocabulary(config, tokenizer)
    return TextEncoder(replace(config, vocab_size=tokenizer.vocab_size))


class TextEncoder(nn.Module):
    """Token embedding [V + 1, dim] (row V = the start / null token) + `TransformerEncoder`.
    forward(ids [B, L], padding_mask [B, L]) -> context [B, L, dim]."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError(
                "TextEncoderConfig.vocab_size is null: build with build_text_encoder(config, "
                "tokenizer), which takes the tokenizer's"
            )
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size + 1, config.dim)
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_STD)
        self.encoder = TransformerEncoder(config.transformer_config())

    @property
    def start_id(self) -> int:
        """Id of the start token every prompt begins with (the empty prompt's only token)."""
        assert self.config.vocab_size is not None  # __init__ refused null
        return self.config.vocab_size

    def forward(self, ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """ids int64 [B, L] (L <= max_tokens), padding_mask bool [B, L] (True = padded; None
        = none) -> context [B, L, dim], 0 at padded positions."""
        if ids.ndim != 2 or ids.shape[1] > self.config.max_tokens:
            raise ValueError(
                f"ids of shape {list(ids.shape)}: expected [B, L], L <= max_tokens = "
                f"{self.config.max_tokens}"
            )
        if padding_mask is not None and (
            padding_mask.dtype != torch.bool or padding_mask.shape != ids.shape
        ):
            raise ValueError(
                f"padding_mask {padding_mask.dtype} {list(padding_mask.shape)}: expected bool "
                f"{list(ids.shape)} (the ids' shape)"
            )
        context = self.encoder(self.embedding(ids), key_padding_mask=padding_mask)
        if padding_mask is None:
            return context
        return context.masked_fill(padding_mask[..., None], 0.0)

    def encode(self, tokenizer: BpeTokenizer, prompts: Sequence[str]) -> TextContext:
        """Prompts -> the UNet's context [B, max_tokens, dim] and context_mask, on the
        encoder's device (truncation by the config's policy)."""
        check_vocabulary(self, tokenizer)
        cfg = self.config
        batch = tokenize_prompts(tokenizer, prompts, cfg.max_tokens, cfg.truncate)
        batch = batch.to(self.embedding.weight.device)
        return TextContext(self(batch.ids, batch.padding_mask), batch.padding_mask)

    @torch.no_grad()
    def init_embeddings_from(self, vectors: Tensor, token_ids: Sequence[int]) -> int:
        """Initialise token embeddings from word2vec vectors (see the module docstring).

        vectors float [N, d]; token_ids: N ints, the token id of each row (-1 = skip that row).
        Row token_ids[i] of the embedding gets s · vectors[i, :min(d, dim)] in its first
        min(d, dim) columns, s = std(embedding before) / std(the copied vector entries).
        Returns the number of rows copied."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.ndim != 2 or len(token_ids) != vectors.shape[0]:
            raise ValueError(
                f"vectors of shape {list(vectors.shape)} for {len(token_ids)} token ids: "
                "expected [N, d] with one token id per row"
            )
        ids = torch.as_tensor(list(token_ids), dtype=torch.int64)
        keep = ids >= 0
        ids, rows = ids[keep], vectors[keep]
        if len(ids) == 0:
            return 0
        vocab = self.start_id  # token ids 0..V-1; the start token is not word2vec's
        if int(ids.max()) >= vocab:
            raise ValueError(
                f"token id {int(ids.max())} is outside the vocabulary 0..{vocab - 1} "
                f"(vocab_size {vocab})"
            )
        if len(ids.unique()) != len(ids):
            raise ValueError("token_ids holds duplicates: one vector per token")
        weight = self.embedding.weight
        width = min(vectors.shape[1], self.config.dim)
        copied = rows[:, :width].to(weight)
        spread = copied.std() if copied.numel() > 1 else copied.abs().mean()
        weight[ids.to(weight.device), :width] = copied * (weight.std() / spread.clamp_min(1e-12))
        return len(ids)


def word2vec_token_vectors(model: Word2Vec) -> tuple[Tensor, list[int]]:
    """A token-unit word2vec model's input vectors float32 [N, d] and the token id of each row,
    the arguments of `TextEncoder.init_embeddings_from`. Its tokenizer must be the encoder's
    (`check_vocabulary(encoder, model.tokenizer)`)."""
    if model.config.unit != "token":
        raise ValueError(
            f"a word2vec model of unit {model.config.unit!r}: expected unit 'token' (one vector "
            "per BPE token id)"
        )
    return torch.from_numpy(model.vectors), [int(k) for k in model.vocab.keys]
