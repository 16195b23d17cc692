from pathlib import Path

from flows import check
from tests.conftest import REPO, loom, make_project


def test_code_files_follow_imports_transitively(tmp_path):
    pkg = tmp_path / "components" / "text"
    pkg.mkdir(parents=True)
    (tmp_path / "components" / "__init__.py").write_text('"""doc only."""\n')
    (pkg / "__init__.py").write_text("from components.text import helpers  # code: tracked\n")
    (pkg / "helpers.py").write_text("import json\nfrom ..util import thing\n")
    (tmp_path / "components" / "util.py").write_text("thing = 1\n")
    (pkg / "stage.py").write_text("from components.text.helpers import x\nimport numpy\n")
    assert check.code_files(tmp_path, "components.text.stage") == [
        "components/text/__init__.py",
        "components/text/helpers.py",
        "components/text/stage.py",
        "components/util.py",
    ]


def test_imports_for_annotations_only_are_not_dependencies(tmp_path):
    pkg = tmp_path / "components"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""doc only."""\n')
    (pkg / "trainer.py").write_text("from components.model import Model\n")
    (pkg / "model.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import typing\n"
        "if TYPE_CHECKING:\n    from components.trainer import Stats\n"
        "if typing.TYPE_CHECKING:\n    import components.trainer\n"
        "else:\n    from components import util\n"
    )
    (pkg / "util.py").write_text("x = 1\n")
    assert check.code_files(tmp_path, "components.model") == [
        "components/model.py",
        "components/util.py",
    ]


def test_this_repository_passes():
    res = loom(REPO, "check")
    assert res.returncode == 0, res.stderr
    assert "agree" in res.stdout


def test_missing_code_dep_is_caught(tmp_path):
    root = make_project(tmp_path / "proj")
    dvc_yaml = root / "dvc.yaml"
    text = dvc_yaml.read_text()
    # Drop the BPE tokenizer from the tokenize stages' deps only (bpe stages keep it).
    head, sep, tail = text.partition("  tokenize:")
    dep = "        - components/text/bpe/tokenizer.py\n"
    dvc_yaml.write_text(head + sep + tail.replace(dep, ""))
    res = loom(root, "check")
    assert res.returncode == 1
    message = "tokenize@small: component 'text.tokenize' imports components/text/bpe/tokenizer.py"
    assert message in res.stderr
    assert "bpe@small" not in res.stderr
    assert Path(root / "dvc.yaml").read_text() != text
