"""A corpus as BPE token ids (stage "text.tokenize"): one list<int32> per document.

config.py  TokenizeConfig
encode.py  tokenize_file: one parquet file of texts -> one of token ids
stage.py   stage "text.tokenize"
"""
