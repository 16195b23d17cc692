"""Loom's word2vec against gensim's, on the same real corpus with the same settings, in one run.

    python benchmarks/word2vec.py [--words 2000000] [--mode skipgram|cbow|both]
                                  [--device cpu|cuda] [--batch-size N [N ...]]
                                  [--gensim-workers N] [--seeds N] [--hogwild off|on|both]
                                  [--update-cap N [N ...]]

Corpus: real English prose that ships offline with Python itself and with the installed
packages: the stdlib's help topics, docstrings and comments, then the docstrings of
site-packages (sorted by path) until `--words` words; words as the pipeline's `unit: word`
makes them (`word2vec/sentences.py: words`), one document per sentence. Cached under
.loom/bench/ after the first build (parsing site-packages takes a minute or two).

Settings (the issue's): dim 100, window 5, negative 5, sample 1e-3, min_count 5, 5 epochs;
gensim with as many workers as cores. Throughput = corpus words x epochs / wall seconds of
the whole training call (vocabulary building included, for both). Quality, measured by
gensim's own evaluators on both models' input vectors: WordSim353 Spearman rho and
questions-words analogy accuracy (3CosAdd over the most frequent words: restrict_vocab is
params.yaml's `embedding_eval.restrict_vocab`, 30,000, what the pipeline's evaluation uses;
gensim's own default would be 300,000). The 2M-word corpus has ~10,750 words seen 5 times or
more, so on it either bound keeps every word.

Targets: CPU throughput >= 1.0x gensim at rho >= gensim - 0.02 and analogy >= gensim - 1
point; on a GPU machine (--device cuda --gensim-workers 2) >= 20x gensim's 2-core throughput.
CUDA is initialised before the clock starts (a GPU process pays that once, not per model).
Loom runs with its defaults otherwise: on CPU `compile: auto` compiles CBOW's step (and
skip-gram's under hogwild), and the first compiled run of each kind in the process pays
Inductor's start-up inside its time: ~3 s with a warm disk cache; ~40 s compiling for a new
batch size, dim or window on this 2-core machine, ~2 min from an empty Inductor cache.
On CPU Loom runs twice per model unless `--hogwild` says otherwise: its default,
deterministic trainer (one stream of batches, each split over the cores), and `hogwild: true`
(a thread per core training its own chunks on the shared matrices without locks, which is
how gensim's workers run; results vary from run to run, as gensim's do with several workers).
With several `--batch-size` (or `--update-cap`) values, Loom trains once per value (per pair)
against the one gensim run. A Loom run that diverges (`DivergedError`: too large an update
cap for the batch) is reported as such and left out of the means.
With `--seeds N`, every model trains N times (seeds 1..N, interleaved: gensim's seed 1, then
Loom's, then seed 2, so that a slow or fast spell of a shared machine falls on both alike),
and the verdict compares means: the evaluation sets are small on this corpus (~50
in-vocabulary WordSim353 pairs), so one run's rho moves by several hundredths with the seed
alone; the spread is printed beside the means.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.text.stdlib_text.documents import iter_stdlib_documents  # noqa: E402
from components.text.word2vec.config import Word2VecConfig  # noqa: E402
from components.text.word2vec.data import EncodedCorpus  # noqa: E402
from components.text.word2vec.sentences import words  # noqa: E402
from components.text.word2vec.trainer import DivergedError, train_word2vec  # noqa: E402

SETTINGS = dict(dim=100, window=5, negative=5, sample=1e-3, min_count=5, epochs=5)
# Analogies are scored over the pipeline's candidates: the most frequent words, as many as the
# embedding_eval stage takes (gensim's evaluate_word_analogies would take 300,000).
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
RESTRICT_VOCAB: int = PARAMS["embedding_eval"]["restrict_vocab"]


def corpus(n_words: int) -> list[list[str]]:
    cache = ROOT / ".loom" / "bench" / f"w2v-corpus-{n_words}.jsonl"
    if cache.is_file():
        return [json.loads(line) for line in cache.open()]
    sources = [
        iter_stdlib_documents(("topics", "docstrings", "comments")),
        iter_stdlib_documents(("docstrings",), stdlib_root=Path(sysconfig.get_paths()["purelib"])),
    ]
    sentences, total = [], 0
    for docs in sources:
        for _, text in docs:
            ws = words(text)
            if ws:
                sentences.append(ws)
                total += len(ws)
            if total >= n_words:
                break
        if total >= n_words:
            break
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with tmp.open("w") as out:
        out.writelines(json.dumps(s) + "\n" for s in sentences)
    os.replace(tmp, cache)
    return sentences


def quality(keys: list[str], vectors) -> tuple[float, float, float, float]:
    """(WordSim353 rho, its OOV %, analogy accuracy, SimLex-999 rho) by gensim's evaluators.
    SimLex-999 (~5x more in-vocabulary pairs here) is a cross-check, not part of the target."""
    from gensim.models import KeyedVectors
    from gensim.test.utils import datapath

    kv = KeyedVectors(vectors.shape[1])
    kv.add_vectors(keys, vectors)
    _, spearman, oov = kv.evaluate_word_pairs(datapath("wordsim353.tsv"))
    accuracy, _ = kv.evaluate_word_analogies(
        datapath("questions-words.txt"), restrict_vocab=RESTRICT_VOCAB
    )
    _, simlex, _ = kv.evaluate_word_pairs(datapath("simlex999.txt"))
    return float(spearman.statistic), float(oov), float(accuracy), float(simlex.statistic)


def passes(sentences) -> float:
    """Seconds of Loom's host-side corpus pass: counting and encoding units."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        EncodedCorpus.build(sentences, SETTINGS["min_count"], None, Path(tmp))
    return time.perf_counter() - started


def run_gensim(sentences, mode: str, workers: int, seed: int = 1) -> tuple[float, tuple]:
    from gensim.models import Word2Vec as GensimWord2Vec

    s = SETTINGS
    started = time.perf_counter()
    model = GensimWord2Vec(
        sentences, vector_size=s["dim"], window=s["window"], negative=s["negative"],
        sample=s["sample"], min_count=s["min_count"], epochs=s["epochs"], workers=workers,
        sg=int(mode == "skipgram"), hs=0, seed=seed,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return seconds, quality(list(model.wv.index_to_key), model.wv.vectors)


def run_loom(
    sentences,
    mode: str,
    device: str,
    batch_size: int | None,
    cuda_graphs: bool = True,
    seed: int = 1,
    hogwild: bool = False,
    update_cap: int | None = None,
) -> tuple[float, tuple]:
    config = Word2VecConfig(
        mode=mode,
        unit="word",
        device=device,
        cuda_graphs=cuda_graphs,
        hogwild=hogwild,
        progress=False,
        seed=seed,
        **SETTINGS,
    )
    if batch_size:
        config.batch_size = batch_size
    if update_cap:
        config.update_cap = update_cap
    started = time.perf_counter()
    model = train_word2vec(lambda: sentences, config)
    seconds = time.perf_counter() - started
    return seconds, quality(model.keys, model.vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=2_000_000)
    parser.add_argument("--mode", choices=["skipgram", "cbow", "both"], default="both")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[None])
    parser.add_argument(
        "--update-cap", type=int, nargs="+", default=[None], help="Loom's update_cap values"
    )
    parser.add_argument("--gensim-workers", type=int, default=os.cpu_count())
    parser.add_argument(
        "--compare-eager", action="store_true", help="cuda: also run each batch size without graphs"
    )
    parser.add_argument("--seeds", type=int, default=1, help="train every model N times")
    parser.add_argument(
        "--hogwild", choices=["off", "on", "both"], default="both",
        help="cpu: Loom's deterministic trainer, its hogwild threads, or both",
    )  # fmt: skip
    args = parser.parse_args()

    if args.device == "cuda":
        import torch

        torch.ones(1, device="cuda").sum().item()  # context creation stays off the clock
    sentences = corpus(args.words)
    n_words = sum(map(len, sentences))
    print(f"corpus: {n_words:,} words in {len(sentences):,} documents; cores: {os.cpu_count()}")
    print(f"settings: {SETTINGS}; gensim workers: {args.gensim_workers}; loom on {args.device}")
    print(f"analogies: 3CosAdd over the {RESTRICT_VOCAB:,} most frequent words (params.yaml)")
    print(f"loom corpus pass (count + encode, part of each loom time): {passes(sentences):.2f} s")
    header = f"{'mode':9} {'impl':22} {'seconds':>8} {'words/s':>11} {'ws353 rho':>9}"
    print(header + f" {'oov %':>6} {'analogy %':>9} {'simlex rho':>10}")
    target = 20.0 if args.device == "cuda" else 1.0
    seeds = range(1, args.seeds + 1)
    graphs = (True, False) if args.compare_eager and args.device == "cuda" else (True,)
    hogwild = {"off": (False,), "on": (True,), "both": (False, True)}[args.hogwild]
    if args.device == "cuda":
        hogwild = (False,)
    variants = {}
    choices = itertools.product(args.batch_size, args.update_cap, graphs, hogwild)
    for batch_size, cap, cuda_graphs, lock_free in choices:
        impl = f"loom b={batch_size}" if batch_size else "loom"
        impl += f" cap={cap}" if cap else ""
        impl += ("" if cuda_graphs else " eager") + (" hogwild" if lock_free else "")
        variants[impl] = (batch_size, cuda_graphs, lock_free, cap)
    for mode in ("skipgram", "cbow") if args.mode == "both" else (args.mode,):
        gensim: list = []
        loom: dict[str, list] = {impl: [] for impl in variants}
        for seed in seeds:  # interleaved, so a slow or fast spell of the machine hits both
            gensim.append(run_gensim(sentences, mode, args.gensim_workers, seed))
            print(row(mode, f"gensim s={seed}", n_words, *gensim[-1]), flush=True)
            for impl, (batch_size, cuda_graphs, lock_free, cap) in variants.items():
                try:
                    run = run_loom(
                        sentences, mode, args.device, batch_size, cuda_graphs, seed, lock_free, cap
                    )
                except DivergedError as err:
                    print(f"{mode:9} {impl + f' s={seed}':22} {err}", flush=True)
                    continue
                loom[impl].append(run)
                print(row(mode, f"{impl} s={seed}", n_words, *run), flush=True)
        for impl, runs in loom.items():
            if runs:
                verdict(mode, impl, n_words, gensim, runs, target)
            else:
                print(f"{mode:9} {impl:22} diverged in every run: NOT MET", flush=True)


def mean_run(runs: list[tuple[float, tuple]]) -> tuple[float, tuple]:
    """Mean seconds and mean of each quality figure over seeded runs."""
    n = len(runs)
    seconds = sum(sec for sec, _ in runs) / n
    return seconds, tuple(sum(figures) / n for figures in zip(*(q for _, q in runs), strict=True))


def spread(runs: list[tuple[float, tuple]]) -> str:
    """Min..max of rho and analogy over seeded runs (empty for one run)."""
    if len(runs) < 2:
        return ""
    rho = [q[0] for _, q in runs]
    acc = [q[2] * 100 for _, q in runs]
    return f"   rho {min(rho):.3f}..{max(rho):.3f}, analogy {min(acc):.2f}..{max(acc):.2f}"


def verdict(mode: str, impl: str, n_words: int, gensim: list, loom: list, target: float) -> None:
    (g_sec, g_q), (l_sec, l_q) = mean_run(gensim), mean_run(loom)
    if len(loom) > 1:
        print(row(mode, "gensim mean", n_words, g_sec, g_q) + spread(gensim))
        print(row(mode, f"{impl} mean", n_words, l_sec, l_q) + spread(loom))
    ratio, d_rho, d_acc = g_sec / l_sec, l_q[0] - g_q[0], (l_q[2] - g_q[2]) * 100
    ok = ratio >= target and d_rho >= -0.02 and d_acc >= -1.0
    print(
        f"{mode:9} {impl:22} throughput {ratio:.2f}x gensim (target >= {target:g}x), "
        f"rho {d_rho:+.3f} (>= -0.02), analogy {d_acc:+.2f} points (>= -1): "
        f"{'MET' if ok else 'NOT MET'}",
        flush=True,
    )


def row(mode: str, impl: str, n_words: int, seconds: float, q: tuple) -> str:
    rate = n_words * SETTINGS["epochs"] / seconds
    return (
        f"{mode:9} {impl:22} {seconds:8.2f} {rate:11,.0f} {q[0]:9.3f} {q[1]:6.1f} {q[2] * 100:9.2f}"
        f" {q[3]:10.3f}"
    )


if __name__ == "__main__":
    main()
