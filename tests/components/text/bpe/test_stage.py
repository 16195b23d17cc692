import json
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiktoken.load import load_tiktoken_bpe
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from components import registry
from components.config import ConfigError, build
from components.stage import Output, StageInputError, StageIO
from components.text.bpe.config import BpeStageConfig
from components.text.bpe.stage import STAGE, _subsample
from components.text.bpe.tokenizer import ENDOFTEXT, BpeTokenizer
from tests.components.bad_parquet import corrupt_copy, truncated_copy

DOCS = [topics[name] for name in sorted(topics)][:30]
# Text that trips tokenizers up: whitespace runs, line ends, tabs, non-ASCII letters, emoji,
# CJK, punctuation after a space (which HF decode's "clean up" would eat), the special token
# alone, inside a word and twice in a row.
VARIED = [
    DOCS[-1] + ENDOFTEXT,
    "Hello  world\n\n\tcafé 日本語 😀 ",
    "   leading and trailing   ",
    "\r\n\r\n  \t\t\tx",
    "a , b . c ; d ! e ?",
    ENDOFTEXT,
    "x<|endoftext|>y" + ENDOFTEXT + ENDOFTEXT + " z",
    "naïve Ärger — “quotes” ‘single’ ½ ß ǅ",
    "def f(x):\n    return x ** 2  # comment",
    "",
]


def write_split(path: Path, texts: list[str | None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"doc{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"doc_id": ids, "text": pa.array(texts, pa.string())}), path)
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    write_split(tmp_path / "corpus" / "train.parquet", DOCS[:24])
    write_split(tmp_path / "corpus" / "val.parquet", DOCS[24:])
    return tmp_path / "corpus"


def run(corpus: Path, out: Path, **config):
    io = StageIO(inputs={"corpus": corpus}, outputs={"tokenizer": out})
    return STAGE.run(BpeStageConfig(**config), io)


def test_registry_finds_the_stage():
    assert registry.load("text.bpe") is STAGE
    assert (STAGE.inputs, STAGE.outputs) == (("corpus",), ("tokenizer",))


def test_run_writes_tokenizer_and_exports(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken caches by path
    out = tmp_path / "tokenizer"
    result = run(corpus, out, vocab_size=400)

    tok = BpeTokenizer.load(out)
    assert tok.vocab_size == 400 and tok.special_tokens == {ENDOFTEXT: 399}
    text = DOCS[-1] + ENDOFTEXT
    hf = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert hf.encode(text).ids == tok.encode(text)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "config.json", "gpt2/merges.txt", "gpt2/vocab.json", "special_tokens_map.json",
        "tokenizer.json", "tokenizer.tiktoken", "tokenizer_config.json",
    ]  # fmt: skip
    gpt2 = BpeTokenizer.from_gpt2(out / "gpt2" / "vocab.json", out / "gpt2" / "merges.txt")
    assert gpt2.merges == tok.merges
    ranks = load_tiktoken_bpe(str(out / "tokenizer.tiktoken"))
    assert sorted(ranks.values()) == list(range(399))

    m = result.metrics
    assert (m["vocab_size"], m["num_merges"], m["train_docs"]) == (400, 400 - 257, 24)
    assert 0 < m["unique_words"] < m["train_words"]
    val = DOCS[24:]
    expected = sum(len(t.encode()) for t in val) / sum(len(tok.encode_ordinary(t)) for t in val)
    assert m["val_bytes_per_token"] == pytest.approx(expected) and expected > 1.5
    assert m["train_seconds"] > 0
    curve = result.curves["merge_count"]
    assert [step for step, _ in curve] == list(range(143))
    counts = [count for _, count in curve]
    assert counts == sorted(counts, reverse=True)  # no merge can outnumber an earlier one
    assert result.artifacts == [Output("tokenizer", "config.json")]
    assert json.loads((out / "config.json").read_text())["version"] == 1


def test_tokenizer_directory_opens_with_hugging_face_tools(corpus, tmp_path):
    """The stage's output directory as HF users open it: `tokenizers` from the file,
    transformers from the file and from the directory (beside Loom's own config.json)."""
    out = tmp_path / "tokenizer"
    run(corpus, out, vocab_size=400)
    tok = BpeTokenizer.load(out)
    hf = Tokenizer.from_file(str(out / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out)
    assert (auto.eos_token, auto.eos_token_id) == (ENDOFTEXT, 399)
    assert auto.all_special_tokens == [ENDOFTEXT]
    assert len(auto) == len(fast) == hf.get_vocab_size() == 400
    for text in VARIED:
        ids = tok.encode(text)
        assert hf.encode(text).ids == ids, text
        assert fast.encode(text) == ids, text
        assert auto.encode(text) == ids and auto(text)["input_ids"] == ids, text
        assert auto.decode(ids) == tok.decode(ids) == text, text
        assert auto.decode(ids, skip_special_tokens=True) == text.replace(ENDOFTEXT, "")
    assert auto.convert_ids_to_tokens(tok.encode(" the")) == ["Ġthe"]


def test_without_val_measures_compression_on_train(tmp_path):
    write_split(tmp_path / "corpus" / "train.parquet", DOCS[:5])
    result = run(tmp_path / "corpus", tmp_path / "tok", vocab_size=300, max_docs=3)
    assert result.metrics["train_docs"] == 3
    assert "val_bytes_per_token" not in result.metrics
    assert result.metrics["train_bytes_per_token"] > 1.0


@pytest.mark.parametrize(
    "texts, message",
    [(None, "train.parquet: corpus file not found"), (["", None], "train.parquet: holds no text")],
)
def test_bad_corpus_is_a_stage_input_error(tmp_path, texts, message):
    (tmp_path / "corpus").mkdir()
    if texts is not None:
        write_split(tmp_path / "corpus" / "train.parquet", texts)
    with pytest.raises(StageInputError, match=message):
        run(tmp_path / "corpus", tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("damage", [truncated_copy, corrupt_copy])
def test_damaged_corpus_parquet_is_named(tmp_path, damage):
    good = tmp_path / "good.parquet"
    table = pa.table({"doc_id": [str(i) for i in range(30)], "text": DOCS})
    pq.write_table(table, good, row_group_size=10)
    bad = damage(good, tmp_path / "corpus" / "train.parquet")
    with pytest.raises(StageInputError) as err:
        run(tmp_path / "corpus", tmp_path / "tok")
    assert str(err.value).startswith(f"{bad}: not a readable Parquet file (truncated or corrupt?)")


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ({"vocab_sise": 300}, "vocab_sise", 300, "one of the keys"),
        ({"vocab_size": "300"}, "vocab_size", "300", "int"),
        ({"vocab_size": 256}, "vocab_size", 256, "an int >= 257"),
        ({"vocab_size": 257, "special_tokens": ["<a>", "<b>"]}, "vocab_size", 257, "an int >= 258"),
        ({"special_tokens": ["<a>", "<a>"]}, "special_tokens", ["<a>", "<a>"], "distinct"),
        ({"max_docs": 0}, "max_docs", 0, "an int >= 1"),
    ],
)
def test_config_errors_name_key_value_and_expectation(section, key, value, expected):
    with pytest.raises(ConfigError) as err:
        build(BpeStageConfig, section, "bpe.small")
    assert (err.value.key, err.value.value) == (f"bpe.small.{key}", value)
    assert expected in err.value.expected


def test_config_defaults_and_minimum():
    assert build(BpeStageConfig, {}, "bpe") == BpeStageConfig(2000, [ENDOFTEXT], None)
    assert build(BpeStageConfig, {"vocab_size": 257}, "bpe").vocab_size == 257


@pytest.mark.parametrize("n", [0, 1, 499, 500, 501, 1234])
def test_curve_subsampling_keeps_ends(n):
    points = _subsample(list(range(n)), 500)
    assert len(points) <= 501
    if n:
        assert points[0] == (0, 0.0) and points[-1] == (n - 1, float(n - 1))
