"""Word-level exports of a token-unit model: vectors keyed by plain words ("the", "file"),
for the tools that know words and not BPE tokens (gensim, word2vec.c's `distance`, anything
that reads its format).

    counts = count_words(corpus / "train.parquet", lowercase=True)
    vocab = frequent_words(counts, min_count=5)
    export_words(model, vocab, out)   # out/words.bin, out/words.safetensors

A token model has vectors for tokens ("Ġthe", "Ġfil", "e"); a word's vector is the mean of its
tokens' vectors, as `Word2Vec.vector(word)` composes it. Which words: those of the corpus text
as `unit: word` reads them (`sentences.words`: runs of letters, lowercased when `lowercase`),
seen at least `min_count` times, the `MAX_WORDS` most frequent of them, most frequent first;
a word one of whose tokens is out of the model's vocabulary has no vector and is left out.
Each row equals `Word2Vec.vector(word)` (tested with gensim). `max_vocab` is not applied: for
a token model it bounds tokens, and a few hundred tokens compose tens of thousands of words.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from components.text.word2vec.sentences import ParquetSentences
from components.text.word2vec.vectors import Word2Vec, write_safetensors, write_word2vec
from components.text.word2vec.vocabulary import Vocabulary

# At most this many words are exported: enough for the evaluation's 30,000-word analogy
# candidates, and few enough that composing them costs well under a second.
MAX_WORDS = 50_000
WORDS_BIN = "words.bin"
WORDS_SAFETENSORS = "words.safetensors"


def count_words(path: Path, lowercase: bool) -> Counter[str]:
    """How often each word occurs in the `text` column of the corpus parquet file at `path`
    (the words `unit: word` training reads). A missing or damaged file, or one without a
    string `text` column, is a `StageInputError` naming it."""
    counts: Counter[str] = Counter()
    for sentence in ParquetSentences(path, "text", lowercase)():
        counts.update(sentence)
    return counts


def frequent_words(counts: Counter[str], min_count: int) -> Vocabulary:
    """The `MAX_WORDS` most frequent words seen >= `min_count` times, most frequent first
    (ties by word)."""
    return Vocabulary.build(counts, min_count, MAX_WORDS)


def export_words(model: Word2Vec, vocab: Vocabulary, directory: Path) -> list[str]:
    """Write `words.bin` (word2vec.c binary: `KeyedVectors.load_word2vec_format(path,
    binary=True)`) and `words.safetensors` ({"vectors": float32 [n, D]}, metadata "word2vec"
    = {"unit": "word", "keys": [n words], "counts": [n corpus counts]}) into `directory`, for
    the words of `vocab` the model composes, in `vocab`'s order. Returns those words."""
    words, vectors = model.word_vectors(vocab.keys)
    count = dict(zip(vocab.keys, vocab.counts.tolist(), strict=True))
    write_word2vec(directory / WORDS_BIN, words, vectors, binary=True)
    info = {"unit": "word", "keys": words, "counts": [count[w] for w in words]}
    write_safetensors(directory / WORDS_SAFETENSORS, vectors, info)
    return words
