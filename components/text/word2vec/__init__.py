"""word2vec (skip-gram and CBOW with negative sampling) in plain torch, as word2vec.c trains it.

    config.py      Word2VecConfig: word2vec.c's options and how the batched trainer runs
    vocabulary.py  Vocabulary: units kept, most frequent first, with counts
    vectors.py     Word2Vec: the trained vectors; queries (nearest neighbours, 3CosAdd),
                   save/load, exports. Imports no training code
    trainer.py     train_word2vec: the epoch loop, checkpoints, resume
    data.py        the corpus encoded once to disk, windows, negatives (torch)
    sgd.py         the batched SGD step, eager (torch)
    compiled.py    the same step compiled for CPU (torch.compile)
    graphs.py      the same step replayed from CUDA graphs
    sentences.py   the stage's training text, streamed from Parquet
    stage.py       stage "text.word2vec"

Import from the module that holds a name: this file re-exports nothing, so importing
`vectors` (as the evaluation does) runs none of the training code.
"""
