"""The diffusion text encoder: prompt tokenization (start token, padding, truncation policies),
the empty prompt's context, vocabulary checks, word2vec initialisation, and its context fed to
the UNet."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from components.config import ConfigError
from components.text.bpe.tokenizer import BpeTokenizer
from components.text.bpe.trainer import train_bpe
from components.text.word2vec.config import Word2VecConfig
from components.text.word2vec.vectors import Word2Vec
from components.text.word2vec.vocabulary import Vocabulary
from components.vision.diffusion.text_encoder import (
    TextEncoder,
    TextEncoderConfig,
    build_text_encoder,
    check_vocabulary,
    tokenize_prompts,
    word2vec_token_vectors,
)
from components.vision.diffusion.unet import UNet, UNetConfig

SMALL = dict(dim=16, depth=2, heads=2, max_tokens=6)


@pytest.fixture(scope="module")
def bytes_only() -> BpeTokenizer:
    """No merges: one token per byte, ids 0..255 ("ab" -> [97, 98]), vocab_size 256."""
    return BpeTokenizer({i: bytes([i]) for i in range(256)}, [])


@pytest.fixture(scope="module")
def trained() -> BpeTokenizer:
    docs = ["a red square above a blue circle", "a blue square left of a red circle"] * 4
    return train_bpe(docs, vocab_size=280)


def _encoder(tokenizer: BpeTokenizer, **changes) -> TextEncoder:
    torch.manual_seed(0)
    return build_text_encoder(TextEncoderConfig(**(SMALL | changes)), tokenizer)


def test_prompts_become_a_start_token_their_tokens_and_padding(bytes_only):
    batch = tokenize_prompts(bytes_only, ["ab", "", "xyz"], max_tokens=5, pad_id=7)
    assert batch.ids.tolist() == [[256, 97, 98, 7, 7], [256, 7, 7, 7, 7], [256, 120, 121, 122, 7]]
    assert batch.padding_mask.tolist() == [
        [False, False, False, True, True],
        [False, True, True, True, True],
        [False, False, False, False, True],
    ]
    assert batch.ids.dtype == torch.int64 and batch.padding_mask.dtype == torch.bool
    ids, mask = tokenize_prompts(bytes_only, [], max_tokens=5)  # unpacks like a tuple
    assert ids.shape == mask.shape == (0, 5)


def test_special_token_strings_in_a_prompt_are_plain_text():
    tokenizer = BpeTokenizer({i: bytes([i]) for i in range(256)}, [], {"<s>": 256})
    ids = tokenize_prompts(tokenizer, ["<s>"], max_tokens=5).ids
    assert ids.tolist() == [[257, 60, 115, 62, 0]]  # start = vocab_size 257, then "<", "s", ">"


def test_long_prompts_warn_and_truncate_or_raise(bytes_only):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact fit does not warn
        exact = tokenize_prompts(bytes_only, ["abc"], max_tokens=4)
    assert exact.padding_mask.tolist() == [[False] * 4]
    message = r"prompt 1 \('abcdef'\) has 6 tokens, more than the 3 that max_tokens = 4 leaves"
    with pytest.warns(UserWarning, match=message + r".*: truncated to its first 3"):
        batch = tokenize_prompts(bytes_only, ["a", "abcdef"], max_tokens=4, truncate="warn")
    assert batch.ids[1].tolist() == [256, 97, 98, 99]
    with pytest.raises(ValueError, match=message):
        tokenize_prompts(bytes_only, ["a", "abcdef"], max_tokens=4, truncate="error")
    with pytest.raises(ValueError, match="pad_id = 257"):
        tokenize_prompts(bytes_only, ["a"], max_tokens=4, pad_id=257)


def test_the_encoder_follows_its_config_truncation_policy(bytes_only):
    prompt = "x" * 10
    with pytest.raises(ValueError, match="has 10 tokens"):
        _encoder(bytes_only, truncate="error").encode(bytes_only, [prompt])
    with pytest.warns(UserWarning, match="has 10 tokens"):
        out = _encoder(bytes_only).encode(bytes_only, [prompt])
    assert out.padding_mask.tolist() == [[False] * 6]


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_contexts_are_finite_zero_at_padding_and_the_empty_prompt_is_its_own(
    bytes_only, position, attention
):
    encoder = _encoder(bytes_only, position=position, attention=attention)
    context, mask = encoder.encode(bytes_only, ["ab", "", "abba"])
    assert context.shape == (3, 6, 16) and torch.isfinite(context).all()
    assert torch.equal(mask, tokenize_prompts(bytes_only, ["ab", "", "abba"], 6).padding_mask)
    assert torch.equal(context[mask], torch.zeros(int(mask.sum()), 16))
    assert context[1, 0].abs().sum() > 0  # the empty prompt: its start token's encoding
    assert (context[0, 0] - context[1, 0]).abs().max() > 1e-4  # the text changes it
    # The pad id is only a placeholder: other ids at padded positions give the same context.
    batch = tokenize_prompts(bytes_only, ["ab", "", "abba"], 6)
    repadded = batch.ids.masked_fill(batch.padding_mask, 200)
    assert torch.allclose(encoder(repadded, batch.padding_mask), context, atol=1e-6)


def test_the_context_conditions_the_unet(bytes_only):
    encoder = _encoder(bytes_only)
    unet = UNet(UNetConfig(base_channels=16, blocks_per_level=1, attention_levels=(1,),
                           heads=2, groups=8, context_dim=encoder.config.dim))  # fmt: skip
    with torch.no_grad():
        for p in unet.parameters():  # wake the zero-initialised layers
            if not p.any():
                p.normal_(0, 0.1)
    context, mask = encoder.encode(bytes_only, ["ab", ""])
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    out = unet(x[:1].expand(2, -1, -1, -1), t, context, mask)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-4  # prompt vs empty prompt, same latents


def test_a_tokenizer_of_another_vocabulary_size_is_refused(bytes_only, trained):
    assert trained.vocab_size == 280
    encoder = _encoder(trained)
    assert encoder.config.vocab_size == 280 and encoder.embedding.num_embeddings == 281
    check_vocabulary(encoder, trained)
    check_vocabulary(TextEncoderConfig(**SMALL), bytes_only)  # vocab_size null: any tokenizer
    with pytest.raises(ValueError, match="tokenizer has vocab_size 256 but .* vocab_size 280"):
        check_vocabulary(encoder, bytes_only)
    with pytest.raises(ValueError, match="tokenizer has vocab_size 256 but .* vocab_size 280"):
        encoder.encode(bytes_only, ["a"])
    with pytest.raises(ValueError, match="vocab_size 280"):
        build_text_encoder(TextEncoderConfig(vocab_size=280, **SMALL), bytes_only)
    with pytest.raises(ValueError, match="vocab_size is null"):
        TextEncoder(TextEncoderConfig(**SMALL))


@pytest.mark.parametrize("d", [8, 16, 24])  # fewer, as many and more columns than dim = 16
def test_embeddings_take_word2vec_rows_scaled_to_the_tables_std(bytes_only, d):
    encoder = _encoder(bytes_only)
    before = encoder.embedding.weight.detach().clone()
    vectors = torch.randn(3, d, generator=torch.Generator().manual_seed(0)) * 3.0 + 1.0
    assert encoder.init_embeddings_from(vectors, [97, -1, 5]) == 2
    after = encoder.embedding.weight.detach()
    width = min(d, 16)
    copied = vectors[[0, 2], :width]
    scaled = copied * (before.std() / copied.std())
    assert torch.allclose(after[[97, 5], :width], scaled, atol=1e-6)
    assert after[[97, 5], :width].std().item() == pytest.approx(before.std().item(), rel=1e-4)
    assert torch.equal(after[[97, 5], width:], before[[97, 5], width:])  # the rest: random init
    others = torch.ones(257, dtype=torch.bool)
    others[[97, 5]] = False
    assert torch.equal(after[others], before[others])  # the start token (256) included


def test_embedding_init_refuses_ids_it_cannot_place(bytes_only):
    encoder = _encoder(bytes_only)
    with pytest.raises(ValueError, match="token id 256 is outside the vocabulary 0..255"):
        encoder.init_embeddings_from(torch.randn(2, 4), [1, 256])
    with pytest.raises(ValueError, match="duplicates"):
        encoder.init_embeddings_from(torch.randn(2, 4), [3, 3])
    with pytest.raises(ValueError, match=r"vectors of shape \[2, 4\] for 3 token ids"):
        encoder.init_embeddings_from(torch.randn(2, 4), [1, 2, 3])
    assert encoder.init_embeddings_from(torch.randn(2, 4), [-1, -1]) == 0


def test_a_token_word2vec_model_initialises_its_tokens(bytes_only):
    vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    vocab = Vocabulary([98, 97, 32], np.array([9, 5, 2], dtype=np.int64))
    config = Word2VecConfig(unit="token", dim=8)
    model = Word2Vec(config, vocab, vectors, vectors, tokenizer=bytes_only)
    rows, ids = word2vec_token_vectors(model)
    assert ids == [98, 97, 32] and torch.equal(rows, torch.from_numpy(vectors))
    encoder = _encoder(bytes_only)
    check_vocabulary(encoder, model.tokenizer)
    std = encoder.embedding.weight.std().item()
    assert encoder.init_embeddings_from(rows, ids) == 3
    got = encoder.embedding.weight.detach()[[98, 97, 32], :8]
    assert torch.allclose(got, rows * (std / rows.std().item()), atol=1e-6)
    words = Word2Vec(Word2VecConfig(unit="word", dim=8), Vocabulary(["a"], np.ones(1)),
                     vectors[:1], vectors[:1])  # fmt: skip
    with pytest.raises(ValueError, match="unit 'word': expected unit 'token'"):
        word2vec_token_vectors(words)


def test_forward_refuses_sequences_longer_than_the_positions(bytes_only):
    encoder = _encoder(bytes_only)
    with pytest.raises(ValueError, match=r"ids of shape \[1, 7\]: expected \[B, L\], L <= "):
        encoder(torch.zeros(1, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match="padding_mask torch.int64"):
        encoder(torch.zeros(1, 6, dtype=torch.int64), torch.zeros(1, 6, dtype=torch.int64))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        (dict(max_tokens=1), "max_tokens"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(truncate="drop"), "truncate"),
        (dict(heads=3), "dim"),
        (dict(depth=0), "depth"),
        (dict(dim=15, heads=1), "dim"),  # odd: no sinusoidal positions
    ],
)
def test_config_checks_name_the_key(changes, key):
    with pytest.raises(ConfigError) as err:
        TextEncoderConfig(**(SMALL | dict(position="sinusoidal") | changes))
    assert err.value.key == key
