"""Intrinsic evaluation of word vectors (stage "text.embedding_eval").

    config.py   EmbeddingEvalConfig
    data.py     the test sets: word-similarity pairs and analogy questions, read strictly
    metrics.py  word similarity (Spearman rho) and 3CosAdd analogy accuracy, as gensim
    report.py   nearest neighbours of probe words, PCA plot
    stage.py    stage "text.embedding_eval"

Of word2vec it imports `components.text.word2vec.vectors` alone.
"""
