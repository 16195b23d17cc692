"""Trained word2vec vectors: the queries, the saved artifact and the exports, without training.

    model = Word2Vec.load("data/word2vec/small")
    model.vector("file"); model.most_similar("file", k=5); model.analogy("man", "king", "woman")
    model.vocabulary(top_n=1000); model.export_word2vec("vectors.bin", binary=True)

Made by `trainer.train_word2vec`; this module imports neither the trainer nor its kernels, so
what evaluates vectors (stage "text.embedding_eval") depends on this file alone (and on the
BPE tokenizer, for token units).

Units: `token` models are trained on BPE ids; a word query is answered with the mean of the
input vectors of the word's tokens (as the tokenizer splits " word", mid-sentence), so words
the tokenizer splits still have vectors. `word` models are trained on whole words.
`word_vectors(words)` gives those word vectors for many words at once (the word-level
exports of stage "text.word2vec", `words.py`, are made from it).

Nearest neighbours and 3CosAdd analogies are computed here once, for every caller:
`unit_rows`, `nearest`, `three_cos_add`, and `analogy_answers` for a batch of questions.

Saved as a Loom artifact (`components.artifact`, format "loom-word2vec", version 2):

    config.json        {"format": "loom-word2vec", "version": 2, "config": {Word2VecConfig},
                        "history": [mean loss per example after each epoch]}
    model.safetensors  "input" (the vectors queries use) and "output", float32 [V, D]
    vocab.json         {"unit": "token" | "word", "keys": [V ids or words], "counts": [V]}
    tokenizer/         the BPE tokenizer (token units)
"""

from __future__ import annotations

import json
from collections.abc import Sequence, Set
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from components import artifact
from components.config import ConfigError, build, identity
from components.inputs import json_type, read_json
from components.stage import StageInputError
from components.text.bpe.tokenizer import BpeTokenizer, bytes_to_unicode
from components.text.word2vec.config import Word2VecConfig
from components.text.word2vec.vocabulary import Vocabulary

KIND, VERSION = "word2vec", 2  # 2: a Loom artifact ("format": "loom-word2vec"); 1: "format": 1
VOCAB_FILE = "vocab.json"
TOKENIZER_DIR = "tokenizer"


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 [n, D]; zero rows stay zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1)


def nearest(
    words: Sequence[str],
    unit: np.ndarray,
    query: np.ndarray,
    k: int,
    exclude: Set[str] = frozenset(),
) -> list[tuple[str, float]]:
    """The `k` words most cosine-similar to `query` [D], best first (ties: the earlier, more
    frequent word), none of them in `exclude`: [(word, cosine), ...], fewer when the words
    run out. unit: the words' unit rows, float32 [n, D] (`unit_rows`)."""
    sims = unit @ unit_rows(np.asarray(query)[None, :])[0]  # [n]
    order = np.argsort(-sims, kind="stable")[: k + len(exclude)]
    return [(words[i], float(sims[i])) for i in order if words[i] not in exclude][:k]


def three_cos_add(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """3CosAdd's query for "a is to b as c is to ?" (Mikolov et al. 2013): b - a + c, from the
    unit vectors of a, b and c ([..., D] each, any batch shape). The answer is the candidate of
    highest cosine with it; the query's own length changes no ranking, so it is not rescaled."""
    return b - a + c


def analogy_answers(
    unit: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, excluded: np.ndarray
) -> np.ndarray:
    """3CosAdd over candidate rows for a batch of questions: per question, the row of `unit`
    [V, D] (unit rows) of highest cosine with `three_cos_add` of rows a, b, c (int [B] each),
    rows where `excluded` [B, V] is True left out; -1 where every row is. int [B]. One
    [B, D] @ [D, V] product scores the batch."""
    query = three_cos_add(unit[a], unit[b], unit[c])  # [B, D]
    scores = query @ unit.T  # [B, V]: cosine times a per-question factor > 0
    scores[excluded] = -np.inf
    best = scores.argmax(axis=1)
    return np.where(np.isfinite(scores.max(axis=1)), best, -1)


class Word2Vec:
    """Trained input (word) and output (context) vectors over a vocabulary.

    keys: display strings, most frequent first: words, or for token units GPT-2's printable
        spelling of each token's bytes ("Ġthe").
    vectors: float32 [V, D] input vectors (what queries use); output: [V, D].
    history: mean loss per example at the end of each epoch.
    """

    def __init__(
        self,
        config: Word2VecConfig,
        vocab: Vocabulary,
        vectors: np.ndarray,
        output: np.ndarray,
        tokenizer: BpeTokenizer | None = None,
        history: list[float] | None = None,
    ):
        self.config, self.vocab, self.tokenizer = config, vocab, tokenizer
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.output = np.asarray(output, dtype=np.float32)
        self.history = list(history or [])
        self.keys = [self._display(k) for k in vocab.keys]
        self._index = {k: i for i, k in enumerate(vocab.keys)}
        self._candidates: tuple[list[str], np.ndarray] | None = None  # words, unit rows

    # ---- queries --------------------------------------------------------------------------

    def vector(self, word: str | int) -> np.ndarray | None:
        """Input vector [D] of a word (composed from its tokens for token units), of a token id
        (int, token units) or of a display key; None when it cannot be represented.

        For token units a string is a word first: "the" is the mean of the tokens of " the"
        (the word mid-sentence, as `vocabulary()` and analogies see it), not the token "the"
        that starts a line. A display key is that token when it cannot be a word query
        (a special token, or a leading "Ġ": "Ġthe") or when the word does not compose."""
        if isinstance(word, int | np.integer):
            row = self._index.get(int(word)) if self.config.unit == "token" else None
            return None if row is None else self.vectors[row]
        if self.config.unit == "word":
            row = self._index.get(word.lower() if self.config.lowercase else word)
            return None if row is None else self.vectors[row]
        row = self._key_rows().get(word)
        if row is not None and self._names_a_token(word):
            return self.vectors[row]
        composed = self._compose(word)
        if composed is not None or row is None:
            return composed
        return self.vectors[row]

    def _names_a_token(self, word: str) -> bool:
        """Whether a token unit's display key can only mean that token, never a word."""
        specials = self.tokenizer.special_tokens if self.tokenizer is not None else {}
        return word[:1] == "Ġ" or word in specials

    def _compose(self, word: str) -> np.ndarray | None:
        """Mean input vector [D] of the tokens of " word" (lowercased if `lowercase`); None
        without a tokenizer, or when one of the tokens is out of the vocabulary."""
        if self.tokenizer is None:
            return None
        text = word.lower() if self.config.lowercase else word
        ids = self.tokenizer.encode_ordinary(" " + text)
        rows = [r for r in map(self._index.get, ids) if r is not None]
        if ids and len(rows) == len(ids):  # every token known
            return self.vectors[rows].mean(axis=0)
        return None

    def word_vectors(self, words: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The words of `words` that `vector` answers as words, in the given order, and
        their vectors [n, D] float32, row i equal to `vector(words[i])`: for token units the
        words that compose (the display keys `vector` takes for tokens, "Ġthe" and special
        tokens, left out), for word units those in the vocabulary."""
        kept: list[str] = []
        rows: list[np.ndarray] = []
        token_keys = self._key_rows() if self.config.unit == "token" else {}
        for word in words:
            if word in token_keys and self._names_a_token(word):
                continue
            vec = self._compose(word) if self.config.unit == "token" else self.vector(word)
            if vec is not None:
                kept.append(word)
                rows.append(vec)
        dim = self.vectors.shape[1]
        matrix = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
        return kept, matrix.astype(np.float32, copy=False)

    def _key_rows(self) -> dict[str, int]:
        if not hasattr(self, "_keys_index"):
            self._keys_index = {k: i for i, k in enumerate(self.keys)}
        return self._keys_index

    def vocabulary(self, top_n: int | None = None) -> tuple[list[str], np.ndarray]:
        """Words a query can answer with, most frequent first, and their vectors [n, D]: the
        vocabulary for word units; for token units the tokens that are a whole word
        (a space then letters), spelled without the space."""
        if self.config.unit == "word":
            rows = np.arange(len(self.keys))
            words = list(self.keys)
        else:
            pairs = [(i, w) for i, w in enumerate(map(self._whole_word, self.vocab.keys)) if w]
            rows = np.array([i for i, _ in pairs], dtype=np.int64)
            words = [w for _, w in pairs]
        if top_n is not None:
            rows, words = rows[:top_n], words[:top_n]
        return words, self.vectors[rows]

    def _whole_word(self, token_id: int) -> str | None:
        """The word a token spells when its bytes are a space then letters, else None."""
        if self.tokenizer is None or token_id in self.tokenizer.special_tokens.values():
            return None
        raw = self.tokenizer.token_bytes(int(token_id))
        word = raw[1:].decode("utf-8", errors="replace")
        return word if raw[:1] == b" " and word.isalpha() else None

    def _spellings(self, query: object) -> set:
        """The forms of a query word an answer must not repeat: as typed, as looked up
        (lowercased), and a token key's word ("Ġthe" -> "the")."""
        if not isinstance(query, str):
            return set()
        forms = {query, query.lower() if self.config.lowercase else query}
        return forms | {f[1:] for f in forms if f[:1] == "Ġ"}

    def most_similar(self, query: str | int | np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """The `k` vocabulary words nearest to `query` by cosine (the query word excluded)."""
        vec = query if isinstance(query, np.ndarray) else self.vector(query)
        if vec is None:
            raise KeyError(f"{query!r} is not in the vocabulary and cannot be composed")
        return nearest(*self._unit_vocabulary(), vec, k, self._spellings(query))

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """a is to b as c is to ?: 3CosAdd, the words nearest unit(b) - unit(a) + unit(c)."""
        vecs = [self.vector(w) for w in (a, b, c)]
        missing = [w for w, v in zip((a, b, c), vecs, strict=True) if v is None]
        if missing:
            raise KeyError(f"not in the vocabulary: {missing}")
        query = three_cos_add(*unit_rows(np.stack([v for v in vecs if v is not None])))
        exclude = self._spellings(a) | self._spellings(b) | self._spellings(c)
        return nearest(*self._unit_vocabulary(), query, k, exclude)

    def _unit_vocabulary(self) -> tuple[list[str], np.ndarray]:
        """`vocabulary()` with unit rows (computed once)."""
        if self._candidates is None:
            words, vectors = self.vocabulary()
            self._candidates = words, unit_rows(vectors)
        return self._candidates

    # ---- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the artifact (`config.json`: config and loss history; `model.safetensors`:
        "input" and "output" float32 [V, D]), `vocab.json` and, for token units, `tokenizer/`."""
        tensors = {"input": torch.from_numpy(self.vectors), "output": torch.from_numpy(self.output)}
        # Runtime knobs (device, threads, ...) are not recorded: the artifact is what was made.
        fields = {"config": identity(self.config), "history": self.history}
        directory = artifact.save(directory, KIND, VERSION, fields, tensors)
        keys = self.vocab.keys
        vocab = {"unit": self.config.unit, "keys": keys, "counts": self.vocab.counts.tolist()}
        (directory / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False))
        if self.tokenizer is not None:
            self.tokenizer.save(directory / TOKENIZER_DIR)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Word2Vec:
        """Read what `save` wrote. Each file is checked first: a missing, truncated or
        inconsistent one, or an artifact of another format or version, is a `StageInputError`
        naming it and what is wrong."""
        directory = Path(directory)
        config, history = _read_config(directory)
        vocab = _read_vocab(directory / VOCAB_FILE, config.unit)
        w_in, w_out = _read_matrices(directory, len(vocab), config.dim)
        tok_dir = directory / TOKENIZER_DIR
        tokenizer = BpeTokenizer.load(tok_dir) if tok_dir.is_dir() else None
        if tokenizer is not None and config.unit == "token" and vocab.keys:
            low, high = min(vocab.keys), max(vocab.keys)
            if low < 0 or high >= tokenizer.vocab_size:
                raise StageInputError(
                    f"{directory / VOCAB_FILE}: token id {low if low < 0 else high} is "
                    f"outside the vocabulary 0..{tokenizer.vocab_size - 1} of {tok_dir}"
                )
        return cls(config, vocab, w_in, w_out, tokenizer, history)

    def export_word2vec(self, path: str | Path, binary: bool = False) -> Path:
        """The input vectors in word2vec.c's text or binary format (gensim's
        `KeyedVectors.load_word2vec_format` reads both), keyed by `keys`."""
        return write_word2vec(path, self.keys, self.vectors, binary)

    def export_safetensors(self, path: str | Path) -> Path:
        """{"vectors": [V, D]}; metadata "word2vec" = JSON {"unit", "keys": [V strings]}."""
        return write_safetensors(path, self.vectors, {"unit": self.config.unit, "keys": self.keys})

    def _display(self, key: str | int) -> str:
        if self.config.unit == "word" or self.tokenizer is None:
            return str(key)
        specials = {v: k for k, v in self.tokenizer.special_tokens.items()}
        if key in specials:
            return specials[key]
        table = bytes_to_unicode()
        return "".join(table[b] for b in self.tokenizer.token_bytes(int(key)))


def write_word2vec(
    path: str | Path, keys: Sequence[str], vectors: np.ndarray, binary: bool = False
) -> Path:
    """`vectors` [n, D] keyed by `keys` in word2vec.c's format: a header "n D", then per row
    the key, a space and D float32 (binary) or D numbers to 6 digits (text)."""
    path = Path(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(keys) != len(vectors):
        raise ValueError(f"{path}: {len(keys)} keys for {len(vectors)} vectors")
    with open(path, "wb") as out:
        out.write(f"{len(vectors)} {vectors.shape[1]}\n".encode())
        for key, vec in zip(keys, vectors, strict=True):
            if binary:
                out.write(key.encode() + b" " + vec.tobytes() + b"\n")
            else:
                out.write((key + " " + " ".join(f"{x:.6g}" for x in vec) + "\n").encode())
    return path


def write_safetensors(path: str | Path, vectors: np.ndarray, info: dict) -> Path:
    """{"vectors": float32 [n, D]}; metadata "word2vec" = JSON `info` (the keys and what
    they are). One metadata entry on purpose: safetensors writes several in a per-process
    random order, and these files are versioned outputs whose bytes must not vary."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    metadata = {"word2vec": json.dumps(info, ensure_ascii=False)}
    save_file({"vectors": torch.from_numpy(array)}, Path(path), metadata=metadata)
    return Path(path)


def _read_config(directory: Path) -> tuple[Word2VecConfig, list[float]]:
    """The config and loss history in a saved model's `config.json`."""
    path = directory / artifact.CONFIG_FILE
    fields = artifact.read_config(directory, KIND, VERSION)
    section, history = fields.get("config"), fields.get("history")
    if not isinstance(section, dict):
        raise StageInputError(f"{path}: 'config' is {json_type(section)}, expected an object")
    try:
        config = build(Word2VecConfig, section, "config")
    except ConfigError as err:
        raise StageInputError(f"{path}: {err}") from None
    if not (isinstance(history, list) and all(map(_is_number, history))):
        raise StageInputError(f"{path}: 'history' is not an array of numbers")
    return config, history


def _read_vocab(path: Path, unit: str) -> Vocabulary:
    """The vocabulary in a saved model's `vocab.json`: distinct keys (ints for token units,
    strings for word units), one count >= 0 each."""
    raw = _json_object(path)
    missing = [key for key in ("unit", "keys", "counts") if key not in raw]
    if missing:
        raise StageInputError(f"{path}: missing keys {missing}")
    if raw["unit"] != unit:
        raise StageInputError(f"{path}: unit {raw['unit']!r}, but config.json says {unit!r}")
    keys, counts = raw["keys"], raw["counts"]
    key_type = int if unit == "token" else str
    if not (isinstance(keys, list) and all(_is_a(k, key_type) for k in keys)):
        raise StageInputError(f"{path}: 'keys' is not an array of {key_type.__name__}s")
    if len(set(keys)) != len(keys):
        raise StageInputError(f"{path}: 'keys' holds duplicates")
    if not (isinstance(counts, list) and all(_is_a(c, int) and c >= 0 for c in counts)):
        raise StageInputError(f"{path}: 'counts' is not an array of ints >= 0")
    if len(counts) != len(keys):
        raise StageInputError(f"{path}: {len(keys)} keys but {len(counts)} counts")
    return Vocabulary(keys, np.asarray(counts, dtype=np.int64))


def _read_matrices(directory: Path, size: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The input and output vectors in `model.safetensors`, each float32 [size, dim]."""
    tensors = artifact.read_tensors(directory, ("input", "output"))
    path = directory / artifact.TENSORS_FILE
    for name in ("input", "output"):
        tensor = tensors[name]
        if tuple(tensor.shape) != (size, dim) or not tensor.is_floating_point():
            raise StageInputError(
                f"{path}: tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, expected "
                f"float [{size}, {dim}] ({size} keys in vocab.json, dim {dim} in config.json)"
            )
    return tensors["input"].float().numpy(), tensors["output"].float().numpy()


def _json_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise StageInputError(f"{path}: expected a JSON object, found {json_type(data)}")
    return data


def _is_a(value: object, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)  # JSON true is no int


def _is_number(value: object) -> bool:
    return _is_a(value, int) or _is_a(value, float)
