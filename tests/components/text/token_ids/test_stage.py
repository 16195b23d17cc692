import json
import shutil
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import registry
from components.config import ConfigError, build
from components.stage import StageInputError, StageIO
from components.text.bpe.tokenizer import ENDOFTEXT, BpeTokenizer
from components.text.bpe.trainer import train_bpe
from components.text.token_ids.config import TokenizeConfig
from components.text.token_ids.stage import STAGE
from tests.components.bad_parquet import corrupt_copy, truncated_copy

DOCS = [topics[name] for name in sorted(topics)][:12]
TRAIN = [*DOCS[:8], f"a literal {ENDOFTEXT} stays text", "", "日本語 🤖"]
VAL = DOCS[8:]


def write_split(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"{path.stem}/{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), path)
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe(DOCS, vocab_size=500, special_tokens=[ENDOFTEXT]).save(out)
    return out


@pytest.fixture
def corpus(tmp_path) -> Path:
    write_split(tmp_path / "corpus" / "train.parquet", TRAIN)
    write_split(tmp_path / "corpus" / "val.parquet", VAL)
    return tmp_path / "corpus"


def run(corpus: Path, tokenizer: Path, out: Path, **config):
    io = StageIO(inputs={"corpus": corpus, "tokenizer": tokenizer}, outputs={"tokens": out})
    return STAGE.run(TokenizeConfig(**config), io)


def test_registry_finds_the_stage():
    assert registry.load("text.tokenize") is STAGE


@pytest.mark.parametrize("batch_size", [1, 3, 1024])
def test_tokens_decode_to_documents_plus_eot(corpus, tokenizer_dir, tmp_path, batch_size):
    out = tmp_path / "tokens"
    result = run(corpus, tokenizer_dir, out, batch_size=batch_size)
    tok = BpeTokenizer.load(tokenizer_dir)
    eot = tok.special_tokens[ENDOFTEXT]

    total_tokens = 0
    for split, texts in (("train", TRAIN), ("val", VAL)):
        path = out / f"{split}.parquet"
        assert pq.read_schema(path).field("ids").type == pa.list_(pa.int32())
        assert pq.ParquetFile(path).metadata.num_row_groups == -(-len(texts) // batch_size)
        rows = pq.read_table(path).to_pylist()
        assert [r["doc_id"] for r in rows] == [f"{split}/{i}" for i in range(len(texts))]
        for row, text in zip(rows, texts, strict=True):
            assert tok.decode(row["ids"]) == text + ENDOFTEXT
            assert row["ids"].index(eot) == len(row["ids"]) - 1  # only the appended one
        num_tokens = sum(len(r["ids"]) for r in rows)
        assert result.metrics[f"num_tokens_{split}"] == num_tokens
        assert result.metrics[f"num_docs_{split}"] == len(texts)
        total_tokens += num_tokens

    text_bytes = sum(len(t.encode()) for t in TRAIN + VAL)
    ordinary = total_tokens - len(TRAIN) - len(VAL)
    assert result.metrics["bytes_per_token"] == pytest.approx(text_bytes / ordinary)
    assert result.metrics["eot_appended"] == 1.0
    assert {d.name for d in result.datasets} >= {"tokens/train", "tokens/val"}


def test_without_eot(corpus, tokenizer_dir, tmp_path):
    result = run(corpus, tokenizer_dir, tmp_path / "tokens", append_eot=False)
    tok = BpeTokenizer.load(tokenizer_dir)
    rows = pq.read_table(tmp_path / "tokens" / "train.parquet").to_pylist()
    assert [tok.decode(r["ids"]) for r in rows] == TRAIN
    assert result.metrics["eot_appended"] == 0.0
    assert result.metrics["num_tokens_train"] == sum(len(r["ids"]) for r in rows)


def test_tokenizer_without_eot_appends_nothing(corpus, tmp_path):
    train_bpe(DOCS, vocab_size=300).save(tmp_path / "plain")
    result = run(corpus, tmp_path / "plain", tmp_path / "tokens")
    rows = pq.read_table(tmp_path / "tokens" / "val.parquet").to_pylist()
    assert [BpeTokenizer.load(tmp_path / "plain").decode(r["ids"]) for r in rows] == VAL
    assert result.metrics["eot_appended"] == 0.0


def test_missing_val_split_is_skipped(tmp_path, tokenizer_dir):
    write_split(tmp_path / "corpus" / "train.parquet", DOCS[:2])
    result = run(tmp_path / "corpus", tokenizer_dir, tmp_path / "tokens")
    assert not (tmp_path / "tokens" / "val.parquet").exists()
    assert result.metrics["num_docs_train"] == 2 and result.metrics["num_tokens_val"] == 0


def test_missing_train_is_a_stage_input_error(tmp_path, tokenizer_dir):
    (tmp_path / "corpus").mkdir()
    with pytest.raises(StageInputError, match="train.parquet"):
        run(tmp_path / "corpus", tokenizer_dir, tmp_path / "tokens")


def test_missing_column_is_a_stage_input_error(tmp_path, tokenizer_dir):
    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "corpus" / "train.parquet")
    with pytest.raises(StageInputError, match=r"missing columns \['doc_id'\]"):
        run(tmp_path / "corpus", tokenizer_dir, tmp_path / "tokens")


def test_tokenizer_with_an_id_outside_its_vocab_fails_naming_it(corpus, tokenizer_dir, tmp_path):
    bad = tmp_path / "bad-tokenizer"
    shutil.copytree(tokenizer_dir, bad)
    data = json.loads((bad / "config.json").read_text())
    data["merges"][17][2] = 99999  # was accepted, and ids >= vocab_size were written
    (bad / "config.json").write_text(json.dumps(data))
    with pytest.raises(StageInputError) as err:
        run(corpus, bad, tmp_path / "tokens")
    message = str(err.value)
    assert message.startswith(f"{bad / 'config.json'}: merge 17: id 99999 is outside 0..499")
    assert not (tmp_path / "tokens").exists()


def test_ids_outside_the_vocab_are_never_written(corpus, tokenizer_dir, tmp_path, monkeypatch):
    encode = BpeTokenizer.encode_ordinary
    monkeypatch.setattr(
        BpeTokenizer, "encode_ordinary", lambda self, text: encode(self, text) + [500]
    )
    with pytest.raises(StageInputError) as err:
        run(corpus, tokenizer_dir, tmp_path / "tokens", batch_size=4)
    assert str(err.value) == (
        f"{tokenizer_dir / 'config.json'}: encoding {corpus / 'train.parquet'} gave token id "
        "500, outside the tokenizer's vocabulary 0..499"
    )
    assert pq.read_metadata(tmp_path / "tokens" / "train.parquet").num_rows == 0


@pytest.mark.parametrize("damage", [truncated_copy, corrupt_copy])
def test_damaged_corpus_parquet_is_named(tmp_path, tokenizer_dir, damage):
    good = tmp_path / "train.parquet"
    table = pa.table({"doc_id": [str(i) for i in range(40)], "text": (DOCS * 4)[:40]})
    pq.write_table(table, good, row_group_size=10)  # the corrupt copy breaks the last group
    (tmp_path / "corpus").mkdir()
    bad = damage(good, tmp_path / "corpus" / "train.parquet")
    with pytest.raises(StageInputError) as err:
        run(tmp_path / "corpus", tokenizer_dir, tmp_path / "tokens", batch_size=10)
    assert str(err.value).startswith(f"{bad}: not a readable Parquet file (truncated or corrupt?)")


def test_text_column_of_another_type_is_named(tmp_path, tokenizer_dir):
    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.table({"doc_id": ["a"], "text": [5]}), tmp_path / "corpus" / "train.parquet")
    with pytest.raises(StageInputError, match=r"train\.parquet: column 'text' is int64, expected"):
        run(tmp_path / "corpus", tokenizer_dir, tmp_path / "tokens")


@pytest.mark.parametrize(
    "section, key, value",
    [({"batch_size": 0}, "batch_size", 0), ({"append_eot": 1}, "append_eot", 1)],
)
def test_config_errors(section, key, value):
    with pytest.raises(ConfigError) as err:
        build(TokenizeConfig, section, "tokenize")
    assert (err.value.key, err.value.value) == (f"tokenize.{key}", value)
