"""Text pipeline components, one subpackage per family, each with its stage in `stage.py`:

stdlib_text     real text that ships with Python        stage "text.stdlib_text"
corpus          normalized, deduplicated train/val text  stage "text.corpus"
bpe             byte-level BPE tokenizer and trainer     stage "text.bpe"
token_ids       a corpus as BPE token ids                stage "text.tokenize"
word2vec        skip-gram/CBOW vectors and trainer       stage "text.word2vec"
embedding_eval  word similarity, analogies, report       stage "text.embedding_eval"
"""
