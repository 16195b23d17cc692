"""The report: nearest neighbours of probe words and their tables, the PCA plot."""

import numpy as np
import pytest

from components.stage import StageInputError
from components.text.embedding_eval.report import nearest_neighbours, neighbours_table, pca_plot
from tests.components.text.embedding_eval.planted import PNG_MAGIC, planted


def test_nearest_neighbours_and_tables():
    rows = nearest_neighbours(planted(), ["king", "unicorn", "apple"], k=2)
    assert [probe for probe, _ in rows] == ["king", "unicorn", "apple"]
    king = rows[0][1]
    assert [w for w, _ in king] == ["prince", "man"]
    assert king[0][1] == pytest.approx(1.9 / np.sqrt(2 * 1.82))
    assert king[1][1] == pytest.approx(np.sqrt(0.5))
    assert rows[1][1] == []
    assert [w for w, _ in rows[2][1]] == ["pear", "prince"]

    markdown = neighbours_table(rows).splitlines()
    assert markdown[:2] == ["| probe | nearest neighbours (cosine) |", "| --- | --- |"]
    assert markdown[2] == "| king | prince (0.996), man (0.707) |"
    assert markdown[3] == "| unicorn | *not in the model* |"
    tsv = neighbours_table(rows, "tsv").splitlines()
    assert tsv[0] == "probe\trank\tword\tcosine"
    assert tsv[1:3] == ["king\t1\tprince\t0.9959", "king\t2\tman\t0.7071"]
    assert len(tsv) == 5  # header + 2 + 0 + 2
    piped = [("a|b", [("c|d", 1.0)])]
    assert neighbours_table(piped).splitlines()[2] == "| a\\|b | c\\|d (1.000) |"


def test_pca_plot_writes_png(tmp_path):
    path = pca_plot(planted(), 5, tmp_path / "projection.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    with pytest.raises(StageInputError, match="at least 2 words"):
        pca_plot(planted(), 1, tmp_path / "one.png")
