"""Byte-level BPE in the GPT-2 style, pure Python (+ `regex`).

    pretokenizer.py  GPT-2's pre-token regex and the special-token splitter
    tokenizer.py     BpeTokenizer: encode/decode, save/load (a loom-bpe artifact), exports to
                     HF tokenizers, GPT-2 files and tiktoken. Imports no training code
    trainer.py       train_bpe: merge learning (MergeTrainer)
    config.py        BpeStageConfig
    stage.py         stage "text.bpe"

Import from the module that holds a name: this file re-exports nothing, so what only encodes
(stages "text.tokenize", "text.word2vec", "text.embedding_eval") never loads the trainer.
"""
