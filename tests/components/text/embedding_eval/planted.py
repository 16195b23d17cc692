"""Word vectors for evaluation tests: `ArrayVectors` over a fixed table, and `planted()`, where
king - man + woman = queen exactly."""

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ArrayVectors:
    """WordVectors over a fixed table; `words` are in descending frequency order."""

    def __init__(self, words: list[str], matrix: np.ndarray):
        self.words, self.matrix = words, matrix.astype(np.float32)
        self.index = {w: i for i, w in reversed(list(enumerate(words)))}

    def vector(self, word: str) -> np.ndarray | None:
        i = self.index.get(word)
        return None if i is None else self.matrix[i]

    def vocabulary(self, top_n: int | None = None) -> tuple[list[str], np.ndarray]:
        return self.words[:top_n], self.matrix[:top_n]


def planted() -> ArrayVectors:
    """royal/male/female/fruit axes: king - man + woman = queen exactly."""
    royal, male, female, fruit = np.eye(4)
    table = {
        "king": royal + male,
        "man": male,
        "woman": female,
        "queen": royal + female,
        "apple": fruit,
        "prince": royal + 0.9 * male + 0.1 * fruit,
        "pear": fruit + 0.05 * royal,
    }
    return ArrayVectors(list(table), np.stack(list(table.values())))
