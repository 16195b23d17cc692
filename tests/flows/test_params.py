import pytest

from flows import params


def write(tmp_path, text):
    (tmp_path / "params.yaml").write_text(text)


def test_section_and_missing_key(tmp_path):
    write(tmp_path, "bpe:\n  small: {vocab_size: 300}\n")
    data = params.load(tmp_path)
    assert params.section(data, "bpe.small") == {"vocab_size": 300}
    with pytest.raises(params.ParamsError, match=r"no key 'bpe.tiny' .*have \['small'\]"):
        params.section(data, "bpe.tiny")


def test_malformed_yaml_names_file_and_line(tmp_path):
    write(tmp_path, "bpe:\n  small: {vocab_size: 300\n  large: 1\n")
    with pytest.raises(params.ParamsError) as info:
        params.load(tmp_path)
    assert "params.yaml" in str(info.value) and "line 3" in str(info.value)


def test_missing_and_non_mapping(tmp_path):
    with pytest.raises(params.ParamsError, match="file not found"):
        params.load(tmp_path)
    write(tmp_path, "- a\n- b\n")
    with pytest.raises(params.ParamsError, match="expected a mapping"):
        params.load(tmp_path)


def test_overrides_keep_comments_and_types(tmp_path):
    write(tmp_path, "# top comment\nbpe:\n  small:\n    vocab_size: 300  # why\n    name: x\n")
    params.apply_overrides(tmp_path, ["bpe.small.vocab_size=512", "bpe.small.name=[a, b]"])
    text = (tmp_path / "params.yaml").read_text()
    assert "# top comment" in text and "# why" in text
    assert params.load(tmp_path)["bpe"]["small"] == {"vocab_size": 512, "name": ["a", "b"]}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("bpe.small.vocab=5", "no such key"),
        ("novalue", "expected KEY=VALUE"),
        ("bpe.x.y=1", "no key"),
    ],
)
def test_bad_overrides_leave_file_alone(tmp_path, override, match):
    write(tmp_path, "bpe:\n  small:\n    vocab_size: 300\n")
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(params.ParamsError, match=match):
        params.apply_overrides(tmp_path, [override])
    assert (tmp_path / "params.yaml").read_text() == before


def test_overlay_file_becomes_overrides(tmp_path):
    write(tmp_path, "bpe:\n  small: {vocab_size: 300, specials: [a]}\nloom:\n  stage_retries: {}\n")
    overlay = tmp_path / "gpu.yaml"
    overlay.write_text("bpe:\n  small: {vocab_size: 32000}\nloom:\n  stage_retries: {bpe: 2}\n")
    found = params.overlay_overrides(tmp_path, overlay)
    assert found == ["bpe.small.vocab_size=32000", 'loom.stage_retries={"bpe": 2}']
    params.apply_overrides(tmp_path, found)
    assert params.load(tmp_path)["loom"]["stage_retries"] == {"bpe": 2}
    assert params.load(tmp_path)["bpe"]["small"] == {"vocab_size": 32000, "specials": ["a"]}


def test_missing_overlay_is_named_as_an_overlay(tmp_path, monkeypatch):
    """`loom run -P params.gpu2.yaml` (a typo) names the overlay, not params.yaml."""
    write(tmp_path, "bpe:\n  small: {vocab_size: 300}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(params.ParamsError) as info:
        params.overlay_overrides(tmp_path, "params.gpu2.yaml")
    assert str(info.value) == "params.gpu2.yaml: params overlay (-P) not found"
    with pytest.raises(params.ParamsError, match="params overlay"):
        params.overlay_overrides(tmp_path, tmp_path)  # a directory


PARAMS_TEXT = """\
# Loom params: comments, quotes and nulls are what a person wrote
bpe:
  small:
    vocab_size: 1024   # tokens
    special_tokens: ["<|endoftext|>"]
stdlib_text:
  max_docs: null
  name: 'quoted'
"""


def sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_set_value_keeps_comments_quotes_and_nulls(tmp_path):
    write(tmp_path, PARAMS_TEXT)
    params.apply_overrides(tmp_path, ["bpe.small.vocab_size=2048"])
    assert (tmp_path / "params.yaml").read_text() == PARAMS_TEXT.replace("1024 ", "2048 ")
    params.apply_overrides(tmp_path, ["bpe.small.vocab_size=null"])
    assert "    vocab_size: null   # tokens\n" in (tmp_path / "params.yaml").read_text()


def test_a_rejected_value_leaves_the_file_byte_identical(tmp_path):
    """The merged params are checked before anything is written (here: a checker that
    rejects them, as the pipeline's does for `vocab_size: abc`)."""
    write(tmp_path, PARAMS_TEXT)
    before = sha256(tmp_path / "params.yaml")
    seen = []

    def check(text):
        seen.append(text)
        raise params.ParamsError("params.yaml: bpe.small.vocab_size = 'abc': expected int")

    with pytest.raises(params.ParamsError, match="expected int"):
        params.apply_overrides(tmp_path, ["bpe.small.vocab_size=abc"], check=check)
    assert "vocab_size: abc" in seen[0]
    assert sha256(tmp_path / "params.yaml") == before
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # no temp file left


def test_writing_params_leaves_ruamel_as_dvc_uses_it(tmp_path):
    """DVC writes dvc.lock with ruamel's round-trip dumper in the same process: Loom's `null`
    for params.yaml must not change how that dumper writes None."""
    import io

    from ruamel.yaml import YAML

    write(tmp_path, PARAMS_TEXT)
    params.apply_overrides(tmp_path, ["stdlib_text.max_docs=null"])
    out = io.StringIO()
    YAML(typ="rt").dump({"max_vocab": None}, out)
    assert out.getvalue() == "max_vocab:\n"


SECTIONS = "bpe:\n  small:\n    vocab_size: 300\n  large:\n    vocab_size: 420\nretries: {}\n"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "bpe.small.vocab=5",
            "override 'bpe.small.vocab': no such key in params.yaml (bpe.small has ['vocab_size'])",
        ),
        ("nosuch=1", "override 'nosuch': no such key in params.yaml (the top level has "),
        (
            "bpe.small.vocab_size.x=1",
            "override 'bpe.small.vocab_size.x': no such key in params.yaml (bpe.small.vocab_size "
            "is 300, not a section of keys)",
        ),
        (
            "bpe.small=512",
            "override bpe.small=512: bpe.small is a section of params.yaml with keys "
            "['vocab_size']; set one of them instead, e.g. -S bpe.small.vocab_size=...",
        ),
        ("bpe=[small, large]", "override bpe=['small', 'large']: bpe is a section of params"),
    ],
)
def test_check_overrides_names_what_params_yaml_has(tmp_path, override, message):
    """Checked against params.yaml as it is, nothing written: a misspelt key would add one
    no stage reads, and a section set to a scalar breaks every stage reading it."""
    write(tmp_path, SECTIONS)
    with pytest.raises(params.ParamsError) as info:
        params.check_overrides(tmp_path, [override])
    assert str(info.value).startswith(message)
    assert (tmp_path / "params.yaml").read_text() == SECTIONS


def test_a_section_may_be_replaced_by_a_mapping_or_null(tmp_path):
    """A foreach section is data (its keys are the variants): `-S bpe={...}` replaces it
    whole, and `retries: {}` may gain keys; null is how a person empties a section."""
    write(tmp_path, SECTIONS)
    parsed = params.check_overrides(
        tmp_path, ["bpe={tiny: {vocab_size: 260}}", "retries={bpe: 2}", "bpe.large=null"]
    )
    assert parsed == [
        ("bpe", {"tiny": {"vocab_size": 260}}),
        ("retries", {"bpe": 2}),
        ("bpe.large", None),
    ]


def test_a_value_that_is_not_yaml_is_one_line(tmp_path):
    with pytest.raises(params.ParamsError) as info:
        params.parse_override("bpe.small.vocab_size=[1, 2")
    assert str(info.value) == (
        "override 'bpe.small.vocab_size=[1, 2': value is not valid YAML (expected ',' or ']', "
        "but got '<stream end>' at column 6 of the value); quote it for a string, e.g. key='[1'"
    )


def test_an_overlay_key_params_yaml_lacks_names_the_overlay(tmp_path):
    write(tmp_path, SECTIONS)
    overlay = tmp_path / "gpu.yaml"
    overlay.write_text("bpe:\n  small: {vocab_size: 8192}\nbpee:\n  small: {vocab_size: 1}\n")
    with pytest.raises(params.ParamsError) as info:
        params.overlay_overrides(tmp_path, overlay)
    assert str(info.value).startswith(
        f"{overlay}: params overlay (-P): override 'bpee': no such key in params.yaml"
    )
