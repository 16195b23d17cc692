"""BPE merge learning: a hand-computed case, determinism, special tokens, and the incremental
pair counts against a full recount."""

import pytest

from components.text.bpe.tokenizer import ENDOFTEXT
from components.text.bpe.trainer import MergeTrainer, train_bpe
from tests.components.text.bpe.test_tokenizer import TRAIN_TEXTS

# ---- training


def test_training_hand_computed_case():
    # "aaabdaaabac": pairs aa:4 ab:2 bd da ba ac:1 -> merge aa=256 -> 256 a b d 256 a b a c;
    # now (256,a) and (a,b) both occur twice: the tie goes to the smaller bytes, b"a" < b"aa",
    # so ab=257 -> 256 257 d 256 257 a c; then (256,257)=258 -> 258 d 258 a c. No pair occurs
    # twice any more, so training stops early at 259 tokens (+1 special).
    tok = train_bpe(["aaabdaaabac"], vocab_size=1000, special_tokens=[ENDOFTEXT])
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.train_stats.merge_counts == [4, 2, 2]
    assert tok.vocab_size == 260
    assert tok.special_tokens == {ENDOFTEXT: 259}
    assert tok.token_bytes(258) == b"aaab"
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_training_is_deterministic_and_order_free():
    first = train_bpe(TRAIN_TEXTS, vocab_size=600)
    again = train_bpe(TRAIN_TEXTS, vocab_size=600)
    reversed_docs = train_bpe(reversed(TRAIN_TEXTS), vocab_size=600)
    assert first.merges == again.merges == reversed_docs.merges
    assert len(first.merges) == 600 - 256


def test_special_tokens_are_never_merged():
    texts = [f"{ENDOFTEXT}hello world{ENDOFTEXT}" * 50, "<|x|><|x|>" * 30]
    tok = train_bpe(texts, vocab_size=400, special_tokens=[ENDOFTEXT, "<|x|>"])
    for i in range(256, tok.vocab_size - 2):
        assert b"<|" not in tok.token_bytes(i) and b"|>" not in tok.token_bytes(i)
    eot, x = tok.special_tokens[ENDOFTEXT], tok.special_tokens["<|x|>"]
    assert tok.encode(f"{ENDOFTEXT}<|x|>hello{ENDOFTEXT}") == [eot, x, *tok.encode("hello"), eot]


@pytest.mark.parametrize("vocab_size, specials", [(255, ()), (256, [ENDOFTEXT]), (10, ())])
def test_vocab_size_too_small(vocab_size, specials):
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=vocab_size, special_tokens=specials)


@pytest.mark.parametrize("num_merges", [1, 10, 100, 400])
def test_incremental_pair_counts_equal_recount(num_merges):
    words = {w.encode(): n for w, n in {"aaaa": 3, " the": 9, " then": 2, "hehehe": 4}.items()}
    text_words = {w.encode(): 1 + len(w) % 3 for w in " ".join(TRAIN_TEXTS[:5]).split()}
    trainer = MergeTrainer(words | text_words)
    for _ in range(num_merges):
        if trainer.step() is None:
            break
        live = {pair: n for pair, n in trainer.pair_counts.items() if n}
        assert live == trainer.recount()
