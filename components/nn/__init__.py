"""Neural network building blocks: attention (softmax, linear; self- and cross-attention with
separate key and value sources), Transformer stacks (with DETR-style per-layer positions),
positions (1-D tables, 2-D sine), a conditioned convolutional residual block."""

from components.nn.attention import (
    AttentionConfig,
    LinearAttentionState,
    MultiHeadAttention,
    linear_attention,
    softmax_attention,
)
from components.nn.positional import PositionEmbedding, SinePosition2d, sinusoidal_table
from components.nn.resblock import ResBlock, ResBlockConfig, Upsample
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
    "LinearAttentionState",
    "MultiHeadAttention",
    "PositionEmbedding",
    "ResBlock",
    "ResBlockConfig",
    "SinePosition2d",
    "TransformerConfig",
    "TransformerDecoder",
    "TransformerEncoder",
    "Upsample",
    "linear_attention",
    "sinusoidal_table",
    "softmax_attention",
]
