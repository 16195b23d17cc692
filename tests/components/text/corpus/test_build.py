import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.stage import StageInputError
from components.text.corpus.build import build_corpus, normalize_text, resolve_sources
from components.text.corpus.config import CorpusConfig
from tests.components.bad_parquet import corrupt_copy, truncated_copy


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def rows(out: Path, split: str) -> list[dict]:
    return pq.read_table(out / f"{split}.parquet").to_pylist()


def all_rows(out: Path) -> dict[str, str]:
    """doc_id -> text over both splits."""
    return {r["doc_id"]: r["text"] for split in ("train", "val") for r in rows(out, split)}


def corpus(tmp_path: Path, paths: list[Path], **config) -> tuple[Path, object]:
    out = tmp_path / "out"
    report = build_corpus(paths, out, CorpusConfig(**config), root=tmp_path / "src")
    return out, report


# ---- formats


@pytest.mark.parametrize(
    "name, content, config, expected",
    [
        (
            "a.txt",
            "One document.\n\nStill the same one.\n",
            {},
            {"a.txt": "One document.\n\nStill the same one."},
        ),
        (
            "a.txt",
            "First paragraph,\ntwo lines.\n \n\n\nSecond.\n",
            {"txt_split": "paragraph"},
            {"a.txt:0": "First paragraph,\ntwo lines.", "a.txt:1": "Second."},
        ),
        (
            "d/b.jsonl",
            '{"id": "x1", "text": "with an id"}\n\n{"text": "line three, no id"}\n',
            {},
            {"d/b.jsonl:x1": "with an id", "d/b.jsonl:3": "line three, no id"},
        ),
        (
            "b.jsonl",
            '{"key": 5, "body": "custom fields"}\n',
            {"text_field": "body", "id_field": "key"},
            {"b.jsonl:5": "custom fields"},
        ),
    ],
)
def test_text_formats(tmp_path, name, content, config, expected):
    path = write(tmp_path / "src" / name, content)
    out, report = corpus(tmp_path, [path], val_fraction=0.0, **config)
    assert rows(out, "train") == [{"doc_id": k, "text": v} for k, v in expected.items()]
    assert rows(out, "val") == []
    assert report.kept == report.train_documents == len(expected)


@pytest.mark.parametrize("with_ids", [True, False])
def test_parquet_format(tmp_path, with_ids):
    table = {"text": ["first row", None, "third row"], "other": [1, 2, 3]}
    if with_ids:
        table["id"] = ["r0", "r1", "r2"]
    path = tmp_path / "src" / "c.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table(table), path)
    out, report = corpus(tmp_path, [path], val_fraction=0.0)
    ids = ["c.parquet:r0", "c.parquet:r2"] if with_ids else ["c.parquet:0", "c.parquet:2"]
    assert rows(out, "train") == [
        {"doc_id": ids[0], "text": "first row"},
        {"doc_id": ids[1], "text": "third row"},
    ]
    assert (report.documents_read, report.too_short) == (3, 1)  # null text counts as empty


def test_output_schema_and_report(tmp_path):
    path = write_jsonl(tmp_path / "src" / "a.jsonl", [{"text": f"doc {i}"} for i in range(100)])
    out, report = corpus(tmp_path, [path], val_fraction=0.3)
    for split in ("train", "val"):
        schema = pq.read_schema(out / f"{split}.parquet")
        assert schema.names == ["doc_id", "text"]
        assert schema.types == [pa.string(), pa.string()]
    saved = json.loads((out / "report.json").read_text())
    assert saved["format_version"] == 1
    assert saved["kept"] == report.kept == 100
    assert saved["train_documents"] + saved["val_documents"] == 100
    assert saved["val_bytes"] == sum(len(r["text"].encode()) for r in rows(out, "val"))


# ---- normalization and dedupe


@pytest.mark.parametrize(
    "text, form, expected",
    [
        ("cafe\u0301", "NFC", "caf\u00e9"),
        ("cafe\u0301", "none", "cafe\u0301"),
        ("\ufb01ne \u2460", "NFC", "\ufb01ne \u2460"),
        ("\ufb01ne \u2460", "NFKC", "fine 1"),
        ("a\r\nb\rc\n", "NFC", "a\nb\nc"),
        ("\n \n  indented  \t\nnext \n\n\t\n", "NFC", "  indented\nnext"),
    ],
)
def test_normalize_text(text, form, expected):
    assert normalize_text(text, form) == expected


def test_normalization_applies_to_documents(tmp_path):
    path = write(tmp_path / "src" / "a.txt", "cafe\u0301\r\nline two\r\n")
    out, _ = corpus(tmp_path, [path], val_fraction=0.0)
    assert all_rows(out) == {"a.txt": "caf\u00e9\nline two"}


def test_dedupe_after_normalization(tmp_path):
    first = write_jsonl(
        tmp_path / "src" / "a.jsonl",
        [{"text": "same"}, {"text": "same\r\n"}, {"text": "other"}, {"text": "cafe\u0301"}],
    )
    second = write_jsonl(tmp_path / "src" / "b.jsonl", [{"text": "caf\u00e9"}, {"text": "new"}])
    out, report = corpus(tmp_path, [first, second])
    assert (report.documents_read, report.duplicates, report.kept) == (6, 2, 4)
    assert sorted(all_rows(out)) == ["a.jsonl:1", "a.jsonl:3", "a.jsonl:4", "b.jsonl:2"]


@pytest.mark.parametrize("min_chars, kept", [(0, 3), (1, 3), (5, 2), (100, 0)])
def test_min_chars(tmp_path, min_chars, kept):
    path = write_jsonl(
        tmp_path / "src" / "a.jsonl", [{"text": t} for t in ["ab", "", "abcde", "  abcdef"]]
    )
    if kept == 0:
        with pytest.raises(StageInputError, match="zero documents remained"):
            corpus(tmp_path, [path], min_chars=min_chars)
        return
    _, report = corpus(tmp_path, [path], min_chars=min_chars)
    assert (report.kept, report.too_short) == (kept, 4 - kept)


# ---- split


def many_docs(path: Path, n: int, start: int = 0) -> Path:
    return write_jsonl(path, [{"text": f"document number {i}"} for i in range(start, start + n)])


def test_split_is_byte_identical_across_runs(tmp_path):
    path = many_docs(tmp_path / "src" / "a.jsonl", 500)
    outputs = []
    for run in ("one", "two"):
        out = tmp_path / run
        build_corpus([path], out, CorpusConfig(val_fraction=0.2), root=tmp_path / "src")
        outputs.append({f.name: f.read_bytes() for f in sorted(out.iterdir())})
    assert list(outputs[0]) == ["report.json", "train.parquet", "val.parquet"]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5])
def test_split_fraction(tmp_path, fraction):
    path = many_docs(tmp_path / "src" / "a.jsonl", 2000)
    _, report = corpus(tmp_path, [path], val_fraction=fraction)
    assert report.val_documents + report.train_documents == 2000
    assert abs(report.val_documents / 2000 - fraction) < 0.03


def test_split_of_a_document_does_not_depend_on_others(tmp_path):
    first = many_docs(tmp_path / "src" / "a.jsonl", 1000)
    out_alone, _ = corpus(tmp_path, [first], val_fraction=0.2)
    val_alone = {r["text"] for r in rows(out_alone, "val")}

    second = many_docs(tmp_path / "src" / "b.jsonl", 1000, start=1000)
    out = tmp_path / "both"
    build_corpus([second, first], out, CorpusConfig(val_fraction=0.2), root=tmp_path / "src")
    val_both = {r["text"] for r in rows(out, "val")}
    assert val_both & {f"document number {i}" for i in range(1000)} == val_alone
    assert len(val_both) > len(val_alone) > 0


def test_split_seed_changes_the_split(tmp_path):
    path = many_docs(tmp_path / "src" / "a.jsonl", 300)
    vals = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        build_corpus([path], out, CorpusConfig(val_fraction=0.3, split_seed=seed))
        vals.append({r["doc_id"] for r in rows(out, "val")})
    assert vals[0] != vals[1]


# ---- invalid UTF-8


def forged_string_parquet(path: Path, values: list[bytes]) -> Path:
    """A Parquet string column holding arbitrary bytes (pyarrow's builders would refuse)."""
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    array = pa.Array.from_buffers(
        pa.string(),
        len(values),
        [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": array}), path)
    return path


@pytest.mark.parametrize(
    "name, content, config, location",
    [
        ("a.txt", b"fine\nab\xffcd\n", {}, "a.txt line 2, byte offset 7"),
        ("a.txt", b"p one\n\nab\xc3(\n", {"txt_split": "paragraph"}, "a.txt line 3, byte offset 9"),
        (
            "a.jsonl",
            b'{"text": "ok"}\n{"text": "b\xe2\x82"}\n',
            {},
            "a.jsonl line 2, byte offset 26",
        ),
        ("a.jsonl", b'\xef\xbb\xbf{"text": "\xff"}\n', {}, "a.jsonl line 1, byte offset 13"),
    ],
)
def test_invalid_utf8_error_names_file_and_offset(tmp_path, name, content, config, location):
    path = write(tmp_path / "src" / name, content)
    with pytest.raises(StageInputError, match="invalid UTF-8") as err:
        corpus(tmp_path, [path], **config)
    assert f"{path.parent}/{location}" in str(err.value)
    assert not (tmp_path / "out" / "train.parquet").exists()  # no partial output left behind


def test_invalid_utf8_in_parquet_names_row(tmp_path):
    path = forged_string_parquet(tmp_path / "src" / "c.parquet", [b"fine", b"bad \xff here"])
    with pytest.raises(StageInputError, match=r"c\.parquet row 1, column 'text', byte offset 4"):
        corpus(tmp_path, [path])


def test_invalid_utf8_replaced_and_counted(tmp_path, caplog):
    txt = write(tmp_path / "src" / "a.txt", b"ab\xffcd \xc3( \xe2\x82")
    jsonl = write(tmp_path / "src" / "b.jsonl", b'{"text": "fine"}\n{"text": "x\xf0\x9fy"}\n')
    escaped = write(tmp_path / "src" / "e.jsonl", b'{"text": "lone \\ud800 surrogate"}\n')
    parquet = forged_string_parquet(tmp_path / "src" / "c.parquet", [b"p \xff"])
    with caplog.at_level(logging.WARNING):
        out, report = corpus(tmp_path, [txt, jsonl, escaped, parquet], on_invalid_utf8="replace")
    assert all_rows(out) == {
        "a.txt": "ab\ufffdcd \ufffd( \ufffd",
        "b.jsonl:1": "fine",
        "b.jsonl:2": "x\ufffdy",
        "e.jsonl:1": "lone \ufffd surrogate",
        "c.parquet:0": "p \ufffd",
    }
    assert report.invalid_utf8_documents == 4
    assert report.invalid_utf8_bytes == (1 + 1 + 2) + 2 + 1 + 1  # bytes in each bad sequence
    assert "a.txt: replaced 4 invalid UTF-8 bytes in 1 documents" in caplog.text


def test_invalid_utf8_replaced_in_paragraphs(tmp_path):
    # old-Mac "\r" newlines: one raw line holds a whole paragraph; its bad byte counts once
    path = write(tmp_path / "src" / "a.txt", b"a\xffb\rc\r\r\nnext\xfe\xfe\n")
    out, report = corpus(tmp_path, [path], txt_split="paragraph", on_invalid_utf8="replace")
    assert all_rows(out) == {"a.txt:0": "a\ufffdb\nc", "a.txt:1": "next\ufffd\ufffd"}
    assert (report.invalid_utf8_documents, report.invalid_utf8_bytes) == (2, 3)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("a.txt", "\ufeffbom text", {"a.txt": "bom text"}),
        ("a.jsonl", '\ufeff{"text": "bom json"}\n', {"a.jsonl:1": "bom json"}),
    ],
)
def test_leading_byte_order_mark_is_dropped(tmp_path, name, content, expected):
    out, _ = corpus(tmp_path, [write(tmp_path / "src" / name, content)], val_fraction=0.0)
    assert all_rows(out) == expected


def test_lone_surrogate_escape_is_an_error_by_default(tmp_path):
    path = write(tmp_path / "src" / "e.jsonl", b'{"text": "ok"}\n{"text": "\\udc80"}\n')
    with pytest.raises(StageInputError, match=r"e\.jsonl line 2: .*surrogate"):
        corpus(tmp_path, [path])


# ---- bad and empty input


@pytest.mark.parametrize(
    "files",
    [
        {"empty.txt": ""},
        {"blank.txt": " \n\t\r\n", "blank.jsonl": '{"text": "  "}\n\n{"text": "\\n"}\n'},
        {"empty.jsonl": ""},
    ],
)
def test_zero_documents_is_an_error_naming_the_files(tmp_path, files):
    paths = [write(tmp_path / "src" / name, content) for name, content in files.items()]
    with pytest.raises(StageInputError, match="zero documents remained") as err:
        corpus(tmp_path, paths)
    assert all(str(path) in str(err.value) for path in paths)


def test_empty_parquet_is_an_error(tmp_path):
    path = tmp_path / "src" / "c.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    with pytest.raises(StageInputError, match="zero documents remained"):
        corpus(tmp_path, [path])


@pytest.mark.parametrize("damage", [truncated_copy, corrupt_copy])
def test_damaged_parquet_is_named(tmp_path, damage):
    good = tmp_path / "good.parquet"
    texts = [f"document {i}: " + "words " * i for i in range(40)]
    pq.write_table(pa.table({"text": texts}), good, row_group_size=10)
    bad = damage(good, tmp_path / "src" / "c.parquet")
    with pytest.raises(StageInputError) as err:
        corpus(tmp_path, [bad])
    assert str(err.value).startswith(f"{bad}: not a readable Parquet file (truncated or corrupt?)")


def test_no_paths_is_an_error(tmp_path):
    with pytest.raises(StageInputError, match="no source files"):
        build_corpus([], tmp_path / "out", CorpusConfig())


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "src" / "gone.txt"
    with pytest.raises(StageInputError, match="gone.txt"):
        corpus(tmp_path, [missing])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.csv", "text\nhello\n", "unsupported file type"),
        ("a.jsonl", '{"text": "ok"}\n{"text": \n', r"a\.jsonl line 2: invalid JSON"),
        ("a.jsonl", '["text"]\n', r"a\.jsonl line 1: expected a JSON object with a 'text' key"),
        ("a.jsonl", '{"body": "no text"}\n', r"line 1: expected a JSON object with a 'text' key"),
        ("a.jsonl", '{"text": 5}\n', r"a\.jsonl line 1: 'text' is int, not str"),
        ("a.parquet", "not parquet at all", r"a\.parquet: not a readable Parquet file"),
    ],
)
def test_malformed_input_is_named(tmp_path, name, content, message):
    path = write(tmp_path / "src" / name, content)
    with pytest.raises(StageInputError, match=message):
        corpus(tmp_path, [path])


def test_parquet_without_text_column(tmp_path):
    path = tmp_path / "src" / "c.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(StageInputError, match=r"no column 'text' in \['body'\]"):
        corpus(tmp_path, [path])


# ---- resolving sources


def test_resolve_sources_is_sorted_and_deduplicated(tmp_path):
    for name in ["b.txt", "a/z.jsonl", "a/b.txt", "c.md"]:
        write(tmp_path / name, "x")
    found = resolve_sources(tmp_path, ["**/*.txt", "**/*.jsonl", "a/*"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b.txt", "a/z.jsonl", "b.txt"]


def test_resolve_sources_of_a_file(tmp_path):
    path = write(tmp_path / "one.txt", "x")
    assert resolve_sources(path, ["**/*.jsonl"]) == [path]


@pytest.mark.parametrize(
    "include, message",
    [
        (["**/*.csv"], r"match the include globs \['\*\*/\*\.csv'\]"),
        (["**/*.txt", "missing.jsonl"], r"missing input file: .*missing\.jsonl"),
    ],
)
def test_resolve_sources_errors_name_the_pattern(tmp_path, include, message):
    write(tmp_path / "a.txt", "x")
    with pytest.raises(StageInputError, match=message):
        resolve_sources(tmp_path, include)


def test_resolve_sources_of_missing_or_empty_dir(tmp_path):
    with pytest.raises(StageInputError, match="nowhere"):
        resolve_sources(tmp_path / "nowhere", ["**/*.txt"])
    with pytest.raises(StageInputError, match="no files in"):
        resolve_sources(tmp_path, ["**/*.txt"])


# ---- bounded memory


def test_large_input_is_written_in_row_groups(tmp_path):
    path = write(
        tmp_path / "src" / "big.jsonl", "".join(f'{{"text": "d{i}"}}\n' for i in range(50_000))
    )
    out, report = corpus(tmp_path, [path], val_fraction=0.0)
    metadata = pq.ParquetFile(out / "train.parquet").metadata
    assert report.kept == metadata.num_rows == 50_000
    assert metadata.num_row_groups == 5
