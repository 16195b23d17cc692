"""Byte-level BPE tokenizer in the GPT-2 style, pure Python (+ `regex`).

    text -> split on special tokens -> GPT-2 regex pre-tokens -> UTF-8 bytes -> merges by rank

Merges never cross a pre-token or a special token (`pretokenizer`). Encoding applies the merge
list the way GPT-2's `encoder.py` and HF `tokenizers` do: repeatedly merge the adjacent pair of
lowest rank. Speed comes from a per-pre-token cache (real text repeats a few thousand pieces)
and from the pre-tokenizer's ASCII fast path. Merges are learnt by `trainer.train_bpe`, which
this module does not import: what only encodes never depends on how merges are learnt.

Token ids are a table, not a rule: GPT-2 orders its 256 byte tokens by printability, so
`from_gpt2` keeps its ids and reproduces tiktoken's GPT-2 ids exactly. A trained tokenizer
uses ids 0..255 = raw bytes, then one id per merge in merge order, then the special tokens.

Saved as a Loom artifact (`components.artifact`): `<dir>/config.json`, format "loom-bpe",
version 1, checked by `load` (no `model.safetensors`: the merges are a table, not weights):

    {"format": "loom-bpe", "version": 1, "pattern": <pre-token regex>,
     "byte_ids": [id of byte 0, ..., id of byte 255],
     "merges": [[hex(left bytes), hex(right bytes), merged id], ...],   # in rank order
     "special_tokens": {"<|endoftext|>": 50256}}

Exports: `export_hf` (HF `tokenizers` tokenizer.json), `export_transformers` (that file plus
`tokenizer_config.json` and `special_tokens_map.json`: a directory `transformers.AutoTokenizer`
opens), `export_gpt2` (vocab.json + merges.txt), `export_tiktoken` (rank file for
`tiktoken.load.load_tiktoken_bpe`).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from functools import cache
from itertools import chain, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import regex

from components import artifact
from components.inputs import json_type
from components.stage import StageInputError
from components.text.bpe.pretokenizer import GPT2_PATTERN, PreTokenizer, special_splitter

if TYPE_CHECKING:  # trainer imports this module
    from components.text.bpe.trainer import TrainStats

ENDOFTEXT = "<|endoftext|>"
KIND, VERSION = "bpe", 1  # "loom-bpe" v1: the fields of the former tokenizer.json, unchanged
FILENAME = artifact.CONFIG_FILE
CACHE_SIZE = 1 << 18  # pre-tokens; real text repeats a few thousand of them most of the time
# The file names Hugging Face tools look for in a tokenizer directory (`export_transformers`).
HF_TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
HF_SPECIAL_TOKENS_FILE = "special_tokens_map.json"

AllowedSpecial = Literal["all", "none"] | Set[str]
Pair = tuple[int, int]


class BpeTokenizer:
    """vocab: id -> bytes of each ordinary token (the 256 single bytes and one per merge).
    merges: id pairs in rank order; each merges into the id of its concatenated bytes.
    special_tokens: string -> id, matched in text before pre-tokenization, never merged."""

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[Pair],
        special_tokens: Mapping[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
    ):
        self._ids = {b: i for i, b in vocab.items()}  # bytes -> id
        if len(self._ids) != len(vocab):
            raise ValueError("vocab maps two ids to the same bytes")
        missing = [b for b in range(256) if bytes([b]) not in self._ids]
        if missing:
            raise ValueError(f"vocab lacks single-byte tokens for bytes {missing[:8]}...")
        self._byte_ids = [self._ids[bytes([b])] for b in range(256)]
        self._ranks: dict[Pair, int] = {}
        self._merged: list[int] = []  # rank -> merged id
        for rank, (a, b) in enumerate(merges):
            merged = self._ids.get(vocab[a] + vocab[b])
            if merged is None:
                raise ValueError(f"merge {rank} ({a}, {b}) has no token in the vocab")
            self._ranks[(a, b)] = rank
            self._merged.append(merged)
        self._specials = dict(special_tokens or {})
        if "" in self._specials:
            raise ValueError("a special token cannot be the empty string")
        clash = set(self._specials.values()) & set(vocab)
        if clash or len(set(self._specials.values())) != len(self._specials):
            raise ValueError(f"special token ids must be new and distinct: {sorted(clash)}")
        self._vocab = dict(vocab) | {i: s.encode("utf-8") for s, i in self._specials.items()}
        self.pattern = pattern
        self._pat = PreTokenizer(pattern)
        self._cache = _PieceCache(self._encode_piece, CACHE_SIZE)
        self.train_stats: TrainStats | None = None  # what `trainer.train_bpe` saw; not saved

    # --- encoding -------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, with special token strings treated as plain text."""
        # Cache hits stay in C (dict.__getitem__ via map); misses go through _encode_piece.
        return list(chain.from_iterable(map(self._cache.__getitem__, self._pat.findall(text))))

    def encode(self, text: str, allowed_special: AllowedSpecial = "all") -> list[int]:
        """Token ids of `text`; the special tokens in `allowed_special` ("all", "none" or a set
        of strings) map to their ids, any other special token string is encoded as text."""
        specials = self._allowed(allowed_special)
        if not specials:
            return self.encode_ordinary(text)
        ids: list[int] = []
        parts = special_splitter(tuple(specials)).split(text)
        for i, part in enumerate(parts):  # odd parts are the captured special tokens
            if i % 2:
                ids.append(specials[part])
            elif part:
                ids += self.encode_ordinary(part)
        return ids

    def _allowed(self, allowed_special: AllowedSpecial) -> dict[str, int]:
        if allowed_special == "all":
            return self._specials
        if allowed_special == "none":
            return {}
        unknown = set(allowed_special) - set(self._specials)
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)}")
        return {s: self._specials[s] for s in allowed_special}

    def _encode_piece(self, piece: bytes) -> tuple[int, ...]:
        """Ids of one pre-token. A pre-token that is itself a token skips the merge loop:
        BPE creates a token only where merging its bytes alone yields it."""
        whole = self._ids.get(piece)
        if whole is not None:
            return (whole,)
        byte_ids = self._byte_ids
        return tuple(_apply_merges([byte_ids[b] for b in piece], self._ranks, self._merged))

    # --- decoding -------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the ids stand for (special tokens as their UTF-8 strings)."""
        try:
            return b"".join(map(self._vocab.__getitem__, ids))
        except KeyError as err:
            raise ValueError(f"unknown token id {err.args[0]}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- vocabulary -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special ones included (= max id + 1 for trained and GPT-2)."""
        return len(self._vocab)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    @property
    def merges(self) -> list[Pair]:
        """Id pairs in rank order."""
        return list(self._ranks)

    def token_bytes(self, token_id: int) -> bytes:
        return self._vocab[token_id]

    # --- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write `<directory>/config.json` (loom-bpe, version 1; one line: thousands of merges
        would be a line each); return its path."""
        fields = {
            "pattern": self.pattern,
            "byte_ids": self._byte_ids,
            "merges": [
                [self._vocab[a].hex(), self._vocab[b].hex(), self._merged[rank]]
                for (a, b), rank in self._ranks.items()
            ],
            "special_tokens": self._specials,
        }
        return artifact.save(directory, KIND, VERSION, fields, indent=None) / FILENAME

    @classmethod
    def load(cls, directory: str | Path) -> BpeTokenizer:
        """Read what `save` wrote. Every part is checked first (the artifact's format and
        version, then `_parse_saved`): a file that is not one is a `StageInputError` naming
        it, never a tokenizer with stray ids."""
        fields = artifact.read_config(directory, KIND, VERSION)
        return cls(*_parse_saved(Path(directory) / FILENAME, fields))

    # --- interchange formats --------------------------------------------------------------

    @classmethod
    def from_gpt2(cls, vocab_json: str | Path, merges_txt: str | Path) -> BpeTokenizer:
        """GPT-2's `encoder.json`/`vocab.json` + `vocab.bpe`/`merges.txt` (byte-to-unicode
        strings). Vocab entries that are neither a byte nor a merge result are special."""
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        encoder: dict[str, int] = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
        # Only the header is a comment: "# #" and "## ##" are real merges.
        pairs = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        ordinary = set(decoder) | {a + b for a, b in pairs}
        vocab = {i: bytes(decoder[c] for c in s) for s, i in encoder.items() if s in ordinary}
        specials = {s: i for s, i in encoder.items() if s not in ordinary}
        merges = [(encoder[a], encoder[b]) for a, b in pairs]
        return cls(vocab, merges, specials)

    def export_gpt2(self, directory: str | Path) -> tuple[Path, Path]:
        """Write `vocab.json` and `merges.txt` (GPT-2 layout) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab, merges = self._gpt2_strings()
        vocab |= self._specials
        vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
        vocab_path.write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
        merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return vocab_path, merges_path

    def export_hf(self, path: str | Path) -> Path:
        """Write a HF `tokenizers` tokenizer.json with the same ids and decodes."""
        if self.pattern != GPT2_PATTERN:
            raise ValueError("export_hf supports only the GPT-2 pre-tokenization pattern")
        vocab, merges = self._gpt2_strings()
        byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": True}
        data = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": i,
                    "content": s,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for s, i in sorted(self._specials.items(), key=lambda item: item[1])
            ],
            "normalizer": None,
            # use_regex=True is HF's built-in copy of GPT2_PATTERN.
            "pre_tokenizer": {"type": "ByteLevel", **byte_level},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", **byte_level},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": [list(pair) for pair in merges],
            },
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def export_transformers(self, directory: str | Path) -> list[Path]:
        """Write the files `transformers.AutoTokenizer.from_pretrained(directory)` reads:
        `tokenizer.json` (`export_hf`), `tokenizer_config.json` and `special_tokens_map.json`
        (the special tokens: `<|endoftext|>` as `eos_token`, since stage "text.tokenize" ends
        every document with it; the others as `additional_special_tokens`). Returns the paths.

        They can sit beside Loom's own `config.json`: transformers reads that file as a model
        config with no `model_type`, and the `tokenizer_class` named here decides (tested
        with transformers 5.23). `clean_up_tokenization_spaces` is off, transformers 5's
        default, said outright for transformers 4, whose default on would make decode drop
        the spaces before punctuation that byte-level BPE keeps."""
        directory = Path(directory)
        tokenizer_path = self.export_hf(directory / HF_TOKENIZER_FILE)
        named = {"eos_token": ENDOFTEXT} if ENDOFTEXT in self._specials else {}
        others = [s for s, _ in sorted(self._specials.items(), key=lambda item: item[1])]
        special_map = named | {"additional_special_tokens": [s for s in others if s != ENDOFTEXT]}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            **special_map,
        }
        written = [tokenizer_path]
        for name, document in ((HF_CONFIG_FILE, config), (HF_SPECIAL_TOKENS_FILE, special_map)):
            path = directory / name
            text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
            path.write_text(text, encoding="utf-8")
            written.append(path)
        return written

    def export_tiktoken(self, path: str | Path) -> Path:
        """Write a tiktoken rank file: `base64(token bytes) id` per ordinary token.
        tiktoken ranks by id, so this needs ids ordered like the merges (trained and GPT-2)."""
        if self._merged != sorted(self._merged):
            raise ValueError("tiktoken needs merged ids that increase with merge rank")
        ordinary = sorted((i, b) for i, b in self._vocab.items() if i not in self._specials_ids())
        lines = [f"{base64.b64encode(b).decode('ascii')} {i}" for i, b in ordinary]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="ascii")
        return path

    def _specials_ids(self) -> set[int]:
        return set(self._specials.values())

    def _gpt2_strings(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """Ordinary vocab and merges as GPT-2's printable byte-to-unicode strings."""
        table = bytes_to_unicode()
        text = {i: "".join(table[b] for b in bs) for i, bs in self._vocab.items()}
        specials = self._specials_ids()
        vocab = {s: i for i, s in text.items() if i not in specials}
        return vocab, [(text[a], text[b]) for a, b in self._ranks]


class _PieceCache(dict):
    """pre-token str -> token ids, filled on a miss; cleared whole when full (cheap, and the
    frequent pre-tokens come straight back)."""

    def __init__(self, encode: Callable[[bytes], tuple[int, ...]], max_size: int):
        super().__init__()
        self._encode, self._max_size = encode, max_size

    def __missing__(self, piece: str) -> tuple[int, ...]:
        if len(self) >= self._max_size:
            self.clear()
        ids = self[piece] = self._encode(piece.encode("utf-8"))
        return ids


_NEVER = 1 << 62  # rank of a pair that is not a merge


def _apply_merges(ids: list[int], ranks: Mapping[Pair, int], merged: Sequence[int]) -> list[int]:
    """Merge the leftmost lowest-rank adjacent pair until none is a merge (in place).

    >>> _apply_merges([97, 97, 98], {(97, 97): 0, (97, 98): 1}, [256, 257])  # "aa" first
    [256, 98]
    """
    # Rank of each adjacent pair, kept in step with `ids` so that a merge re-ranks only its
    # two neighbours and min/index run in C.
    pair_ranks = [ranks.get(p, _NEVER) for p in pairwise(ids)]
    while pair_ranks:
        rank = min(pair_ranks)
        if rank == _NEVER:
            break
        i = pair_ranks.index(rank)
        ids[i : i + 2] = (merged[rank],)
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = ranks.get((ids[i - 1], ids[i]), _NEVER)
        if i < len(pair_ranks):
            pair_ranks[i] = ranks.get((ids[i], ids[i + 1]), _NEVER)
    return ids


SAVED_KEYS = ("pattern", "byte_ids", "merges", "special_tokens")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


def _parse_saved(
    path: Path, data: dict
) -> tuple[dict[int, bytes], list[Pair], dict[str, int], str]:
    """(vocab, merges, special_tokens, pattern) of a saved tokenizer's fields (the artifact
    header already checked), every part checked: the types, 256 distinct byte ids, merges of
    known pieces into new bytes, special tokens, a pattern that compiles, and ids that are
    exactly 0..N-1 for the N tokens. Raises `StageInputError` naming `path`, the entry and
    what was expected."""
    missing = [key for key in SAVED_KEYS if key not in data]
    if missing:
        raise _bad(path, f"missing keys {missing}")
    pattern = data["pattern"]
    if not isinstance(pattern, str):
        raise _bad(path, f"pattern is {json_type(pattern)}, expected a string (a regex)")
    try:
        regex.compile(pattern)
    except regex.error as err:
        raise _bad(path, f"pattern does not compile: {err}") from None
    ids = _SavedIds(path)
    byte_ids = _saved_array(path, "byte_ids", data["byte_ids"])
    if len(byte_ids) != 256:
        raise _bad(path, f"byte_ids has {len(byte_ids)} entries, expected 256 (one per byte)")
    for b, token_id in enumerate(byte_ids):
        ids.add(token_id, f"byte_ids[{b}]")
    vocab = {token_id: bytes([b]) for b, token_id in enumerate(byte_ids)}
    merges = _saved_merges(path, _saved_array(path, "merges", data["merges"]), vocab, ids)
    specials = data["special_tokens"]
    if not isinstance(specials, dict):
        raise _bad(path, f"special_tokens is {json_type(specials)}, expected an object")
    for token, token_id in specials.items():
        if not token:
            raise _bad(path, "special_tokens: a special token cannot be the empty string")
        ids.add(token_id, f"special token {token!r}")
    ids.check_dense()
    return vocab, merges, specials, pattern


def _saved_merges(path: Path, entries: list, vocab: dict[int, bytes], ids: _SavedIds) -> list[Pair]:
    """Merges (id pairs) in rank order; adds each merged token to `vocab` (id -> bytes)."""
    known = {piece: token_id for token_id, piece in vocab.items()}
    merges: list[Pair] = []
    for rank, entry in enumerate(entries):
        where = f"merge {rank}"
        if not (isinstance(entry, list) and len(entry) == 3):
            raise _bad(
                path, f"{where} is {_short(entry)}, expected [hex left, hex right, merged id]"
            )
        pieces = []
        for side, text in zip(("left", "right"), entry[:2], strict=True):
            if not (isinstance(text, str) and _HEX.fullmatch(text)):
                raise _bad(path, f"{where}: {side} piece {_short(text)} is not hex bytes")
            piece = bytes.fromhex(text)
            if piece not in known:
                raise _bad(path, f"{where}: {side} piece {text} is not a byte or earlier merge")
            pieces.append(piece)
        whole = pieces[0] + pieces[1]
        if whole in known:
            raise _bad(path, f"{where}: {whole.hex()} is already token {known[whole]}")
        ids.add(entry[2], where)
        vocab[entry[2]], known[whole] = whole, entry[2]
        merges.append((known[pieces[0]], known[pieces[1]]))
    return merges


class _SavedIds:
    """The ids of a saved tokenizer, each with the entry that holds it, so that a duplicate
    or a gap names the entries involved."""

    def __init__(self, path: Path):
        self.path = path
        self.owners: dict[int, str] = {}

    def add(self, token_id: object, where: str) -> None:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise _bad(self.path, f"{where}: id {_short(token_id)} is not an int")
        if token_id in self.owners:
            owner = self.owners[token_id]
            raise _bad(self.path, f"{where}: id {token_id} is already the id of {owner}")
        self.owners[token_id] = where

    def check_dense(self) -> None:
        """All N ids distinct (checked by `add`) and in 0..N-1: exactly 0..N-1."""
        n = len(self.owners)
        outside = [i for i in self.owners if not 0 <= i < n]
        if outside:
            missing = sorted(set(range(n)) - self.owners.keys())
            raise _bad(
                self.path,
                f"{self.owners[outside[0]]}: id {outside[0]} is outside 0..{n - 1}: the {n} "
                f"tokens (bytes, merges, special tokens) must have ids exactly 0..{n - 1}; "
                f"missing ids {missing[:8]}{' ...' if len(missing) > 8 else ''}",
            )


def _saved_array(path: Path, key: str, value: object) -> list:
    if not isinstance(value, list):
        raise _bad(path, f"{key} is {json_type(value)}, expected an array")
    return value


def _bad(path: Path, problem: str) -> StageInputError:
    return StageInputError(f"{path}: {problem}")


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves,
    the other 68 to U+0100.. in byte order.

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")], table[0xAD]
    ('a', 'Ġ', 'Ċ', 'Ń')
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in keep}
    shifted = iter(range(256, 512))
    for b in range(256):
        if b not in table:
            table[b] = chr(next(shifted))
    return dict(sorted(table.items()))
