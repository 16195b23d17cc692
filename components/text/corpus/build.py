"""Text files in, one normalized, deduplicated UTF-8 corpus out, split into train and val.

Sources, read incrementally (line by line, or in Parquet batches):

    .txt      one document per file, or per blank-line-separated paragraph (`txt_split`)
    .jsonl    one document per line: an object with the text under `text_field`
    .parquet  one document per row of the column `text_field`

Each document's text is normalized (`normalize_text`), dropped when shorter than `min_chars`
(empty documents always), and dropped when an exact duplicate of an earlier one; only 16-byte
digests are kept for that, not texts. Its id is "<relative file>:<id>" when the source has an
`id_field`, else "<relative file>:<index>" (jsonl: line number from 1; paragraph or Parquet
row: index from 0); a whole .txt file is just "<relative file>".

A document goes to val iff blake2b(text digest, salt=split_seed) mod 10_000 falls below
val_fraction * 10_000: its split depends on its text alone, so adding documents never moves
others, and the same input gives byte-identical output.

Output directory:

    train.parquet, val.parquet  columns (doc_id: string, text: string), row groups of at most
                                10_000 documents or 64 MiB of text
    report.json                 `CorpusReport` counts and the format version
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from components.inputs import json_line, open_parquet, parquet_batches
from components.stage import StageInputError
from components.text.corpus.config import CorpusConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])
SPLITS = ("train", "val")
SPLIT_BUCKETS = 10_000
ROW_GROUP_DOCS = 10_000
ROW_GROUP_BYTES = 64 * 2**20
BOM = b"\xef\xbb\xbf"
TEXT_TYPES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
)
SURROGATE = re.compile("[\ud800-\udfff]")  # JSON "\ud800" escapes decode to these; UTF-8 can't


@dataclass
class CorpusReport:
    """Document counts of one build; bytes are UTF-8 bytes of the normalized text."""

    files: int = 0
    documents_read: int = 0
    kept: int = 0
    too_short: int = 0  # includes empty documents
    duplicates: int = 0
    invalid_utf8_documents: int = 0  # documents in which U+FFFD replaced invalid bytes
    invalid_utf8_bytes: int = 0  # a lone-surrogate escape in JSON counts as one
    train_documents: int = 0
    train_bytes: int = 0
    val_documents: int = 0
    val_bytes: int = 0

    def metrics(self) -> dict[str, float]:
        return dataclasses.asdict(self)


class _Doc(NamedTuple):
    doc_id: str
    text: str
    invalid_bytes: int  # invalid UTF-8 bytes replaced by U+FFFD


def normalize_text(text: str, form: Literal["NFC", "NFKC", "none"] = "NFC") -> str:
    """Newlines to "\\n", Unicode normal form `form`, trailing whitespace and leading/trailing
    blank lines removed.

    >>> normalize_text("\\r\\n  cafe\\u0301 \\r\\n\\r\\n", "NFC")
    '  café'
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if form != "none":
        text = unicodedata.normalize(form, text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def resolve_sources(root: Path, include: Sequence[str]) -> list[Path]:
    """The files under directory `root` matching any `include` glob, sorted by relative path
    (`[root]` if `root` is a file).

    A pattern without wildcards names a file that must exist; a wildcard glob may match nothing
    (so the default include works on a directory of .jsonl alone) as long as some pattern matches.
    """
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise StageInputError(f"missing input: {root} does not exist")
    found: dict[str, Path] = {}
    for pattern in include:
        matches = [path for path in root.glob(pattern) if path.is_file()]
        if not matches and not any(ch in pattern for ch in "*?["):
            raise StageInputError(f"missing input file: {root / pattern} (include {pattern!r})")
        found.update((path.relative_to(root).as_posix(), path) for path in matches)
    if not found:
        raise StageInputError(f"no files in {root} match the include globs {list(include)}")
    return [found[name] for name in sorted(found)]


def build_corpus(
    paths: Sequence[Path], out_dir: Path, config: CorpusConfig, root: Path | None = None
) -> CorpusReport:
    """Read `paths` in order and write train.parquet, val.parquet and report.json to `out_dir`.

    Document ids name each file relative to `root` (default: by its file name alone).
    Raises StageInputError for a missing or unsupported file, undecodable text under
    on_invalid_utf8="error", or when no document remains; no partial outputs are left then.
    """
    if not paths:
        raise StageInputError("no source files to read")
    for path in paths:
        if not path.is_file():
            raise StageInputError(f"missing input file: {path}")
        if path.suffix not in READERS:
            raise StageInputError(f"{path}: unsupported file type: expected one of {list(READERS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = _write_splits(paths, out_dir, config, root)
    except BaseException:
        for split in SPLITS:
            (out_dir / f"{split}.parquet").unlink(missing_ok=True)
        raise
    report_json = {"format_version": FORMAT_VERSION, **dataclasses.asdict(report)}
    (out_dir / "report.json").write_text(json.dumps(report_json, indent=2) + "\n")
    return report


def _write_splits(
    paths: Sequence[Path], out_dir: Path, config: CorpusConfig, root: Path | None
) -> CorpusReport:
    report = CorpusReport(files=len(paths))
    seen: set[bytes] = set()
    threshold = round(config.val_fraction * SPLIT_BUCKETS)
    salt = config.split_seed.to_bytes(16, "little")
    total = sum(path.stat().st_size for path in paths)
    with (
        _SplitWriter(out_dir / "train.parquet") as train,
        _SplitWriter(out_dir / "val.parquet") as val,
        tqdm(total=total, unit="B", unit_scale=True, desc="corpus") as progress,
    ):
        for path in paths:
            name = path.relative_to(root).as_posix() if root else path.name
            invalid_docs, invalid_bytes = report.invalid_utf8_documents, report.invalid_utf8_bytes
            for doc in READERS[path.suffix](path, name, config):
                report.documents_read += 1
                if doc.invalid_bytes:
                    report.invalid_utf8_documents += 1
                    report.invalid_utf8_bytes += doc.invalid_bytes
                text = normalize_text(doc.text, config.normalization)
                if len(text) < max(config.min_chars, 1):
                    report.too_short += 1
                    continue
                data = text.encode("utf-8")
                digest = hashlib.blake2b(data, digest_size=16).digest()
                if digest in seen:
                    report.duplicates += 1
                    continue
                seen.add(digest)
                bucket = hashlib.blake2b(digest, digest_size=8, salt=salt).digest()
                split = (
                    val if int.from_bytes(bucket, "little") % SPLIT_BUCKETS < threshold else train
                )
                split.add(doc.doc_id, text, len(data))
            progress.update(path.stat().st_size)
            if report.invalid_utf8_documents > invalid_docs:
                log.warning(
                    "%s: replaced %d invalid UTF-8 bytes in %d documents with U+FFFD",
                    path,
                    report.invalid_utf8_bytes - invalid_bytes,
                    report.invalid_utf8_documents - invalid_docs,
                )
    report.train_documents, report.train_bytes = train.documents, train.bytes
    report.val_documents, report.val_bytes = val.documents, val.bytes
    report.kept = train.documents + val.documents
    if report.kept == 0:
        names = ", ".join(str(path) for path in paths[:5])
        if len(paths) > 5:
            names += f" and {len(paths) - 5} more"
        raise StageInputError(
            f"zero documents remained from {len(paths)} files read ({names}): "
            f"{report.documents_read} read, {report.too_short} shorter than "
            f"{max(config.min_chars, 1)} chars, {report.duplicates} duplicates"
        )
    return report


class _SplitWriter:
    """Appends (doc_id, text) rows to one Parquet file, a row group per buffer flush."""

    def __init__(self, path: Path):
        # Texts are mostly unique and long: dictionaries and min/max statistics would not help.
        self.writer = pq.ParquetWriter(
            path, SCHEMA, compression="zstd", use_dictionary=False, write_statistics=False
        )
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.buffered_bytes = 0
        self.documents = 0
        self.bytes = 0

    def add(self, doc_id: str, text: str, nbytes: int) -> None:
        self.ids.append(doc_id)
        self.texts.append(text)
        self.buffered_bytes += nbytes
        self.documents += 1
        self.bytes += nbytes
        if len(self.ids) >= ROW_GROUP_DOCS or self.buffered_bytes >= ROW_GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.ids:
            table = pa.table([pa.array(self.ids), pa.array(self.texts)], schema=SCHEMA)
            self.writer.write_table(table, row_group_size=len(self.ids))
            self.ids, self.texts, self.buffered_bytes = [], [], 0

    def __enter__(self) -> _SplitWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self.writer.close()


# ---- readers: (path, relative name, config) -> documents with undecoded bytes replaced


def _read_txt(path: Path, name: str, config: CorpusConfig) -> Iterator[_Doc]:
    if config.txt_split == "file":
        data = path.read_bytes()
        skip = len(BOM) if data.startswith(BOM) else 0
        text, bad = _decode(data[skip:], config, str(path), offset=skip, line=1)
        yield _Doc(name, text, bad)
        return
    paragraph: list[str] = []
    paragraph_bad = index = 0
    for number, offset, raw in _lines(path):
        line, bad = _decode(raw, config, str(path), offset, number)
        for part in line.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n").split("\n"):
            if part.strip():
                paragraph.append(part)
                paragraph_bad += bad
                bad = 0  # count a line's bad bytes once, not once per part
            elif paragraph:
                yield _Doc(f"{name}:{index}", "\n".join(paragraph), paragraph_bad)
                paragraph, paragraph_bad, index = [], 0, index + 1
    if paragraph:
        yield _Doc(f"{name}:{index}", "\n".join(paragraph), paragraph_bad)


def _read_jsonl(path: Path, name: str, config: CorpusConfig) -> Iterator[_Doc]:
    for number, offset, raw in _lines(path):
        line, bad = _decode(raw, config, str(path), offset, number)
        if not line.strip():
            continue
        record = json_line(line, path, number)
        if not isinstance(record, dict) or config.text_field not in record:
            raise StageInputError(
                f"{path} line {number}: expected a JSON object with a {config.text_field!r} key"
            )
        text = _text_value(record[config.text_field], f"{path} line {number}", config)
        if SURROGATE.search(text):
            if config.on_invalid_utf8 == "error":
                raise StageInputError(
                    f"{path} line {number}: text has a lone surrogate escape (U+D800..U+DFFF), "
                    "which is not valid UTF-8 (on_invalid_utf8: replace substitutes U+FFFD)"
                )
            text, count = SURROGATE.subn("\ufffd", text)
            bad += count
        source_id = record.get(config.id_field) if config.id_field else None
        yield _Doc(f"{name}:{number if source_id is None else source_id}", text, bad)


def _read_parquet(path: Path, name: str, config: CorpusConfig) -> Iterator[_Doc]:
    file = open_parquet(path)
    with file:
        schema = file.schema_arrow
        if config.text_field not in schema.names:
            raise StageInputError(f"{path}: no column {config.text_field!r} in {schema.names}")
        text_type = schema.field(config.text_field).type
        if not any(is_type(text_type) for is_type in TEXT_TYPES):
            raise StageInputError(
                f"{path}: column {config.text_field!r} is {text_type}, not string"
            )
        use_id = config.id_field in schema.names
        columns = [config.text_field, config.id_field] if use_id else [config.text_field]
        row = 0
        for batch in parquet_batches(file, path, batch_size=ROW_GROUP_DOCS, columns=columns):
            # Bytes, not str: decoding here applies on_invalid_utf8 to invalid UTF-8.
            texts = batch.column(0).cast(pa.large_binary()).to_pylist()
            ids = batch.column(1).to_pylist() if use_id else [None] * len(texts)
            for raw, source_id in zip(texts, ids, strict=True):
                where = f"{path} row {row}, column {config.text_field!r},"
                text, bad = ("", 0) if raw is None else _decode(raw, config, where)
                yield _Doc(f"{name}:{row if source_id is None else source_id}", text, bad)
                row += 1


READERS: dict[str, Callable[[Path, str, CorpusConfig], Iterator[_Doc]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number from 1, byte offset, bytes) of each line of `path`, minus a leading BOM."""
    offset = 0
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            start, offset = offset, offset + len(raw)
            if number == 1 and raw.startswith(BOM):
                raw, start = raw[len(BOM) :], start + len(BOM)
            yield number, start, raw


def _decode(
    data: bytes, config: CorpusConfig, where: str, offset: int = 0, line: int | None = None
) -> tuple[str, int]:
    """UTF-8 text of `data` and its number of invalid bytes, each invalid sequence replaced by
    U+FFFD as `bytes.decode(errors="replace")` does.

    Under on_invalid_utf8="error" raises instead, naming `where` and the first bad byte's
    position: `data` starts at byte `offset` (and on line `line`) of its file.
    """
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as err:
        if config.on_invalid_utf8 == "error":
            if line is not None:
                line += data.count(b"\n", 0, err.start)
                where += f" line {line},"
            raise StageInputError(
                f"invalid UTF-8 ({err.reason}) at {where} byte offset {offset + err.start}"
                " (on_invalid_utf8: replace substitutes U+FFFD)"
            ) from None
    parts: list[str] = []
    bad = pos = 0
    while pos < len(data):
        try:
            parts.append(data[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as err:
            parts += [data[pos : pos + err.start].decode("utf-8"), "\ufffd"]
            bad += err.end - err.start
            pos += err.end
    return "".join(parts), bad


def _text_value(value: object, where: str, config: CorpusConfig) -> str:
    if value is None:
        return ""  # counted as too short, like an empty string
    if not isinstance(value, str):
        raise StageInputError(f"{where}: {config.text_field!r} is {type(value).__name__}, not str")
    return value
