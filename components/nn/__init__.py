"""Neural network building blocks: attention (softmax, linear), Transformer stacks, positions."""

from components.nn.attention import (
    AttentionConfig,
    MultiHeadAttention,
    linear_attention,
    softmax_attention,
)
from components.nn.positional import PositionEmbedding, sinusoidal_table
from components.nn.transformer import (
    DecoderBlock,
    EncoderBlock,
    TransformerConfig,
    TransformerDecoder,
    TransformerEncoder,
)

__all__ = [
    "AttentionConfig",
    "DecoderBlock",
    "EncoderBlock",
    "MultiHeadAttention",
    "PositionEmbedding",
    "TransformerConfig",
    "TransformerDecoder",
    "TransformerEncoder",
    "linear_attention",
    "sinusoidal_table",
    "softmax_attention",
]
