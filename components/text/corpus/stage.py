"""Stage "text.corpus": source text files in, one normalized, deduplicated corpus out, split
into train and val (see `build`).

Input "sources": a directory of .txt/.jsonl/.parquet files (or one file). Output "corpus": a
new directory with `train.parquet`, `val.parquet` (doc_id, text) and `report.json`.
"""

from __future__ import annotations

from components.stage import Dataset, Output, Stage, StageIO, StageResult
from components.text.corpus.build import SPLITS, build_corpus, resolve_sources
from components.text.corpus.config import CorpusConfig


def _run(config: CorpusConfig, io: StageIO) -> StageResult:
    sources, out_dir = io.inputs["sources"], io.outputs["corpus"]
    paths = resolve_sources(sources, config.include)
    report = build_corpus(paths, out_dir, config, root=sources if sources.is_dir() else None)
    datasets = [
        Dataset(f"corpus-{split}", Output("corpus", f"{split}.parquet"), split, num_rows=count)
        for split, count in zip(SPLITS, (report.train_documents, report.val_documents), strict=True)
    ]
    return StageResult(
        metrics=report.metrics(), artifacts=[Output("corpus", "report.json")], datasets=datasets
    )


STAGE = Stage(
    name="text.corpus",
    version="1",
    config=CorpusConfig,
    inputs=("sources",),
    outputs=("corpus",),
    run=_run,
    key_metrics=("kept", "duplicates", "train_bytes"),
)
