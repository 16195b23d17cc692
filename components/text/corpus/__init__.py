"""Text files in, one normalized, deduplicated UTF-8 corpus out, split into train and val.

config.py  CorpusConfig
build.py   reading sources, normalizing, deduplicating, the hash split, the Parquet files
stage.py   stage "text.corpus"
"""
