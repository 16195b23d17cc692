"""The `loom` command line as a user meets it: `run -S/-P` mistakes answered in one line before
anything starts, `--version`, shell completion, and help on every option."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest

from flows import cli
from tests.conftest import loom, make_project
from tests.flows.test_workspace import hold

# A `loom run` that got as far as Prefect says so on stderr (its temporary server).
PREFECT_STARTED = "Starting temporary server"
# Mistakes params.yaml alone shows (argparse, YAML, keys): no DVC, no torch, no lock.
CHEAP_SECONDS = 10.0
# Values checked against each stage's config: DVC resolves the DAG and the components
# (torch) are imported, still well before a Prefect server would answer.
CONFIG_SECONDS = 60.0


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    """One tiny project for every rejected `loom run`: each must leave it as it was."""
    root = make_project(tmp_path_factory.mktemp("cli") / "proj")
    (root / "broken.yaml").write_text("word2vec:\n  dim: [16\n  epochs: 2\n")
    (root / "typo.yaml").write_text("word2vec:\n  dim: 300\nembeding_eval:\n  plot_words: 9\n")
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rejected(root: Path, *argv: str, cwd: Path | None = None) -> tuple[int, str, float]:
    """`loom run ARGV` in project `root` (or its subdirectory `cwd`), expected to fail before
    running anything: (rc, its one stderr line, seconds it took)."""
    before = sha256(root / "params.yaml")
    started = time.monotonic()
    res = loom(cwd or root, "run", *argv)
    seconds = time.monotonic() - started
    assert "Traceback" not in res.stderr, res.stderr
    assert PREFECT_STARTED not in res.stderr + res.stdout
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert sha256(root / "params.yaml") == before  # nothing written
    return res.returncode, lines[0], seconds


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["-S", "bogus"],
            "loom run: error: argument -S/--set-param: override 'bogus': expected KEY=VALUE, "
            "e.g. bpe.small.vocab_size=500 (see: loom run --help)",
        ),
        (
            ["-S", "=3"],
            "loom run: error: argument -S/--set-param: override '=3': expected KEY=VALUE, "
            "e.g. bpe.small.vocab_size=500 (see: loom run --help)",
        ),
        (
            ["-S", "word2vec.dim=[16"],
            "loom run: error: argument -S/--set-param: override 'word2vec.dim=[16': value is "
            "not valid YAML (expected ',' or ']', but got '<stream end>' at column 4 of the "
            "value); quote it for a string, e.g. key='[1' (see: loom run --help)",
        ),
        (
            ["--jobs", "0"],
            "loom run: error: argument --jobs/-j: expected an integer >= 1, got 0 "
            "(see: loom run --help)",
        ),
    ],
)
def test_a_malformed_command_line_is_a_usage_error(proj, argv, line):
    """What argparse can judge from the text alone exits 2, as every usage error does."""
    rc, got, seconds = rejected(proj, *argv)
    assert (rc, got) == (2, line)
    assert seconds < CHEAP_SECONDS


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["-S", "nosuch.key=1"],
            "loom run: error: override 'nosuch.key': params.yaml: no key 'nosuch' (no 'nosuch' "
            "under the top level; have ['action_streams', 'autoencoder', 'bpe', 'corpus', "
            "'detection_data', 'detector', 'embedding_eval', 'encode_latents', "
            "'evaluate_action', 'evaluate_detector', 'evaluate_diffusion', 'extract_features', "
            "'feature_net', 'images', 'loom', 'runtime', 'sample', 'stdlib_text', 'tokenize', "
            "'train_action', 'train_diffusion', 'word2vec'])",
        ),
        (
            ["-S", "word2vec.dimm=300"],
            "loom run: error: override 'word2vec.dimm': no such key in params.yaml (word2vec has "
            "['alpha', 'batch_size', 'dim', 'epochs', 'hogwild', 'lowercase', 'max_vocab', "
            "'min_alpha_ratio', 'min_count', 'mode', 'negative', 'sample', 'seed', 'unit', "
            "'update_cap', 'window'])",
        ),
        (
            ["-S", "word2vec.dim.x=1"],
            "loom run: error: override 'word2vec.dim.x': no such key in params.yaml "
            "(word2vec.dim is 16, not a section of keys)",
        ),
        (
            ["-S", "tokenize=3"],
            "loom run: error: override tokenize=3: tokenize is a section of params.yaml with "
            "keys ['append_eot', 'batch_size']; set one of them instead, e.g. -S "
            "tokenize.append_eot=...",
        ),
        (
            ["-P", "missing.yaml"],
            "loom run: error: missing.yaml: params overlay (-P) not found",
        ),
        (
            ["-P", "broken.yaml"],
            "loom run: error: broken.yaml: line 3, column 9: malformed YAML: expected ',' or "
            "']', but got ':'",
        ),
        (
            ["-P", "typo.yaml"],
            "loom run: error: typo.yaml: params overlay (-P): override 'embeding_eval': no "
            "such key in params.yaml (the top level has ['action_streams', 'autoencoder', "
            "'bpe', 'corpus', 'detection_data', 'detector', 'embedding_eval', "
            "'encode_latents', 'evaluate_action', 'evaluate_detector', 'evaluate_diffusion', "
            "'extract_features', 'feature_net', 'images', 'loom', 'runtime', 'sample', "
            "'stdlib_text', 'tokenize', 'train_action', 'train_diffusion', 'word2vec'])",
        ),
    ],
)
def test_a_key_params_yaml_lacks_is_refused_at_once(proj, argv, line):
    """Keys, sections and overlay files are judged from params.yaml alone: exit 1 (the
    command line is well formed; the project refuses it), in well under a second of work."""
    rc, got, seconds = rejected(proj, *argv)
    assert (rc, got) == (1, line)
    assert seconds < CHEAP_SECONDS


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("abc", "loom run: error: params.yaml: word2vec.dim = 'abc': expected int"),
        ("-3", "loom run: error: params.yaml: word2vec.dim = -3: expected an int >= 1"),
    ],
)
def test_a_value_the_stage_config_refuses_fails_before_prefect_starts(proj, value, line):
    """Types and ranges are what the component's config knows: checked on the merged
    params for the whole pipeline, before any Prefect server or MLflow run."""
    rc, got, seconds = rejected(proj, "-S", f"word2vec.dim={value}")
    assert (rc, got) == (1, line)
    assert seconds < CONFIG_SECONDS


def test_a_typo_does_not_wait_for_the_workspace(proj):
    """`--wait` queues behind another run, but a typo is answered before that: from
    params.yaml, without the lock."""
    holder = hold("workspace", proj)
    try:
        rc, line, seconds = rejected(proj, "--wait", "-S", "word2vec.dimm=1")
    finally:
        holder.kill()
        holder.wait()
    assert rc == 1 and line.startswith("loom run: error: override 'word2vec.dimm': no such key")
    assert seconds < CHEAP_SECONDS


def test_an_overlay_path_is_relative_to_where_loom_runs(proj):
    """`-P` names a file as the shell sees it: from a subdirectory, `../x.yaml`."""
    sub = proj / "sub"
    sub.mkdir(exist_ok=True)
    rc, line, _ = rejected(proj, "-P", "../typo.yaml", cwd=sub)
    assert rc == 1 and line.startswith("loom run: error: ../typo.yaml: params overlay (-P): ")


# ---- --version, completion, help -----------------------------------------------------------


def test_version_comes_from_the_package_metadata(tmp_path):
    res = loom(tmp_path, "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"loom {metadata.version('loom')}\n"


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_completion_scripts_name_every_command(tmp_path, shell):
    res = loom(tmp_path, "completion", shell)
    assert res.returncode == 0, res.stderr
    for command in ("run", "runs", "compare", "services", "sweep", "completion"):
        assert command in res.stdout, command
    assert "params-file" in res.stdout and "set-param" in res.stdout  # tcsh drops the --


def test_completion_offers_every_shell_shtab_supports():
    """`loom completion`'s choices are spelled out (shtab is only imported to print a
    script); they must stay what the pinned shtab supports."""
    import shtab

    assert cli.SHELLS == tuple(shtab.SUPPORTED_SHELLS)


def complete_in_bash(root: Path, script: str, *words: str) -> list[str]:
    """What bash offers for the last of `words` with Loom's completion script loaded."""
    line = " ".join(words)
    probe = (
        f'source "$1"; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
        f'COMP_LINE="{line}"; COMP_POINT={len(line)}; _shtab_loom; printf "%s\\n" '
        '"${COMPREPLY[@]}"'
    )
    (root / "loom.bash").write_text(script)
    res = subprocess.run(
        ["bash", "-c", probe, "bash", str(root / "loom.bash")],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(res.stdout.split())


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_options_and_stage_names(proj):
    script = loom(proj, "completion", "bash").stdout
    assert complete_in_bash(proj, script, "loom", "ru") == ["run", "runs"]
    assert complete_in_bash(proj, script, "loom", "run", "--pa") == ["--params-file"]
    assert complete_in_bash(proj, script, "loom", "compare", "--d") == ["--desc", "--diff"]
    assert complete_in_bash(proj, script, "loom", "completion", "z") == ["zsh"]
    # Stage names are the project's, as DVC lists them.
    assert complete_in_bash(proj, script, "loom", "run", "bpe") == ["bpe@large", "bpe@small"]


def subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def walk(parser: argparse.ArgumentParser, path: str = "loom"):
    """(command path, action) for every action of `parser` and its subcommands."""
    for action in parser._actions:
        yield path, action
    for sub in subparsers(parser):
        for choice in sub._choices_actions:  # `loom --help`'s line per subcommand
            yield f"{path} {choice.dest}", choice
        for name, child in sub.choices.items():
            yield from walk(child, f"{path} {name}")


def test_every_option_and_subcommand_has_help():
    seen = list(walk(cli.parser()))
    missing = [
        f"{path}: {action.option_strings or action.dest}"
        for path, action in seen
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert missing == []
    commands = {path for path, _ in seen}
    assert {"loom run", "loom runs", "loom compare", "loom services up", "loom completion"} <= (
        commands
    )
    assert len(seen) > 60  # the walk reached the subcommands' options too


def test_concurrent_stages_share_the_cores_unless_threads_are_set():
    env: dict[str, str] = {}
    cli.share_cores(2, env, cores=2)
    assert env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env = {}
    cli.share_cores(3, env, cores=8)
    assert env["OMP_NUM_THREADS"] == "2"
    one: dict[str, str] = {}
    cli.share_cores(1, one, cores=2)  # one stage at a time: torch's own default
    assert one == {}
    chosen = {"OMP_NUM_THREADS": "4"}
    cli.share_cores(2, chosen, cores=2)
    assert chosen == {"OMP_NUM_THREADS": "4"}
