"""Models as MLflow models: every stage that declares one logs and registers it after it
succeeds, the registered model loads in a fresh process and predicts as the component does,
and an evaluation's metrics are linked to the model it evaluated. Against the session's real
SQLite store, on one `dvc repro` of the pipeline's small branch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import cloudpickle
import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml

from components.stage import ServedModel, Stage, StageResult
from components.text.bpe.tokenizer import BpeTokenizer
from components.text.bpe.trainer import train_bpe
from components.text.word2vec.vectors import Word2Vec
from flows import models, tracking
from tests.conftest import dvc, git, loom, make_project

TOKENIZER, WORD2VEC = "text.bpe.small", "text.word2vec.small"
MODEL_STAGES = [  # stage, registered name, output role, output path
    ("bpe@small", TOKENIZER, "tokenizer", "data/tokenizers/small"),
    ("word2vec@small", WORD2VEC, "model", "data/word2vec/small"),
]
LOG_BUDGET_SECONDS = 2.0  # what logging and registering a model may add to its stage


@dataclass
class Built:
    root: Path
    experiment_id: str
    runs: dict  # stage name -> its (one) MLflow run


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """`dvc repro embedding_eval@small` once, in an experiment of its own: six stages, two
    of which make a model (bpe@small, word2vec@small)."""
    name = f"test-models-{os.getpid()}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(tracking.EXPERIMENT_ENV, name)
        root = make_project(tmp_path_factory.mktemp("models") / "proj")
        res = dvc(root, "repro", "embedding_eval@small", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(name).experiment_id
    runs = {}
    for run in client.search_runs([experiment_id]):
        assert run.info.status == "FINISHED", run.data.tags
        runs[run.data.tags[tracking.STAGE_TAG]] = client.get_run(run.info.run_id)  # + inputs
    assert len(runs) == 6, sorted(runs)
    return Built(root, experiment_id, runs)


def registered(run, role: str):
    """The model version a stage run registered for its output `role` (its run tag)."""
    uri = run.data.tags[f"{models.MODEL_TAG_PREFIX}{role}"]
    name, _, number = uri.removeprefix("models:/").rpartition("/")
    return mlflow.MlflowClient().get_model_version(name, number)


def model_id(version) -> str:
    """The LoggedModel a registry version was made from: a SQL registry keeps it only as the
    version's source, "models:/<model id>"."""
    return version.model_id or version.source.removeprefix("models:/")


def lock_md5(root: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"][stage]["outs"] if o["path"] == path]
    return out["md5"]


# ---- the models the pipeline makes --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "name", "role", "path"), MODEL_STAGES)
def test_each_model_stage_registers_its_output_with_its_lineage(built, stage, name, role, path):
    client = mlflow.MlflowClient()
    run = built.runs[stage]
    version = registered(run, role)
    assert version.name == name and version.run_id == run.info.run_id
    lineage = {
        tracking.STAGE_TAG: stage,
        tracking.COMPONENT_TAG: name.rpartition(".")[0],
        models.ROLE_TAG: role,
        models.OUTPUT_TAG: path,
        models.MD5_TAG: lock_md5(built.root, stage, path),  # the bytes dvc.lock recorded
        models.RUN_ID_TAG: run.info.run_id,
        tracking.GIT_COMMIT_TAG: git(built.root, "rev-parse", "HEAD").strip(),
        tracking.GIT_DIRTY_TAG: "false",
    }
    assert lineage.items() <= version.tags.items()
    logged = client.get_logged_model(model_id(version))  # what evaluations find by md5
    assert lineage.items() <= logged.tags.items()
    assert logged.status == "READY" and logged.source_run_id == run.info.run_id
    assert logged.experiment_id == built.experiment_id
    # MLflow copies the run's metrics to the model it logs: the training figures are there
    trained = {m.key: m.value for m in logged.metrics if m.run_id == run.info.run_id}
    assert trained["vocab_size"] == run.data.metrics["vocab_size"]
    # the environment is the pinned one, written without MLflow inferring it
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{name}/{version.version}"))
    pins = set(requirements.read_text().split())
    assert {f"mlflow=={mlflow.__version__}", f"regex=={version_of('regex')}"} <= pins
    assert (f"torch=={version_of('torch')}" in pins) == (role == "model")
    seconds = run.data.metrics[models.LOG_SECONDS_METRIC]
    assert 0 < seconds < LOG_BUDGET_SECONDS, seconds


def version_of(dist: str) -> str:
    return version(dist).partition("+")[0]


LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc
import pandas as pd

words, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
vectors = mlflow.pyfunc.load_model("models:/text.word2vec.small/latest")
tokenizer = mlflow.pyfunc.load_model("models:/text.bpe.small/latest")
try:
    vectors.predict(["жжж"])
    oov = None
except Exception as err:
    oov = f"{type(err).__name__}: {err}"
json.dump({
    "vectors": vectors.predict(words).tolist(),
    "ids": tokenizer.predict(texts),
    "ids_from_a_frame": tokenizer.predict(pd.DataFrame({"text": texts})),  # as a server gives
    "runs": [vectors.metadata.run_id, tokenizer.metadata.run_id],
    "oov": oov,
}, sys.stdout)
"""


@pytest.mark.slow
def test_registered_models_load_in_a_fresh_process_and_predict_as_the_components(built, tmp_path):
    words = ["the", "file", "list", "Error"]
    texts = ["the file", "def f(x):\n    return x<|endoftext|>", ""]
    res = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, json.dumps(words), json.dumps(texts)],
        cwd=tmp_path,  # nothing of the project where it runs: only the tracking URI
        env={**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["runs"] == [built.runs[s].info.run_id for s in ("word2vec@small", "bpe@small")]
    w2v = Word2Vec.load(built.root / "data" / "word2vec" / "small")
    expected = np.stack([w2v.vector(w) for w in words])
    np.testing.assert_array_equal(np.asarray(out["vectors"], dtype=np.float32), expected)
    tok = BpeTokenizer.load(built.root / "data" / "tokenizers" / "small")
    assert out["ids"] == out["ids_from_a_frame"] == [tok.encode(t) for t in texts]
    assert out["ids"][1][-1] == tok.special_tokens["<|endoftext|>"]
    assert out["oov"].startswith("OutOfVocabularyError: 1 of 1 words are out of the vocabulary")


@pytest.mark.slow
def test_evaluation_metrics_are_linked_to_the_model_it_evaluated(built):
    client = mlflow.MlflowClient()
    evaluation, training = built.runs["embedding_eval@small"], built.runs["word2vec@small"]
    version = registered(training, "model")
    assert evaluation.data.tags[models.EVALUATED_TAG] == f"models:/{WORD2VEC}/{version.version}"
    assert [m.model_id for m in evaluation.inputs.model_inputs] == [model_id(version)]
    logged = client.get_logged_model(model_id(version))
    linked = {m.key: m.value for m in logged.metrics if m.run_id == evaluation.info.run_id}
    for key in ("wordsim353_spearman", "simlex999_spearman", "analogy_accuracy"):
        assert linked[key] == evaluation.data.metrics[key], key
    # the models of the experiment that have an evaluation's figure: that one alone
    (found,) = mlflow.search_logged_models(
        experiment_ids=[built.experiment_id],
        filter_string="metrics.wordsim353_spearman >= -1",  # a Spearman rho is in [-1, 1]
        output_format="list",
    )
    assert found.model_id == model_id(version)
    # tokenize reads the tokenizer only to use it: its figures describe the tokenizer
    tokenizer = registered(built.runs["bpe@small"], "tokenizer")
    tokenize = built.runs["tokenize@small"]
    assert tokenize.data.tags[models.EVALUATED_TAG] == f"models:/{TOKENIZER}/{tokenizer.version}"
    # a stage that makes a model evaluates none of those it reads (word2vec trains on bpe's)
    assert models.EVALUATED_TAG not in training.data.tags
    assert not training.inputs.model_inputs
    assert models.EVALUATED_TAG not in built.runs["corpus"].data.tags


@pytest.mark.slow
def test_a_model_that_cannot_be_logged_fails_the_stage(built, tmp_path, experiment):
    """The artifact store refuses the model's files (a file where its `models/` directory
    goes): the stage fails saying which model and why, its run is FAILED, nothing is
    registered, and the output it made stays in place."""
    root = Path(shutil.copytree(built.root, tmp_path / "proj", symlinks=True))
    shutil.rmtree(root / "mlflow")  # the new experiment's artifacts go under it
    (root / "mlflow" / "artifacts").mkdir(parents=True)
    (root / "mlflow" / "artifacts" / "models").write_text("not a directory")
    before = (root / "data" / "tokenizers" / "small" / "config.json").read_bytes()

    res = loom(root, "stage", "bpe@small")
    assert res.returncode == 1, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "loom stage bpe@small: error: stage 'bpe@small': logging output 'tokenizer' "
        "(data/tokenizers/small) as MLflow model 'text.bpe.small' failed: "
    ), last
    assert "run the stage again" in last

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert "logging output 'tokenizer'" in run.data.tags[tracking.ERROR_TAG]
    assert f"{models.MODEL_TAG_PREFIX}tokenizer" not in run.data.tags
    run_filter = f"tags.`{models.RUN_ID_TAG}` = '{run.info.run_id}'"
    assert client.search_model_versions(run_filter) == []
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], output_format="list"
    )
    assert logged.status == "FAILED"  # so no evaluation mistakes it for the model
    after = (root / "data" / "tokenizers" / "small" / "config.json").read_bytes()
    assert after == before  # the same tokenizer, made again, in place


# ---- the declaration and its pieces -----------------------------------------------------------


def test_registered_names_are_the_component_then_the_foreach_key():
    assert models.registered_name("word2vec@large", "text.word2vec", "model") == (
        "text.word2vec.large"
    )
    assert models.registered_name("sub/dvc.yaml:bpe@small", "text.bpe", "tokenizer") == (
        "text.bpe.small"
    )
    assert models.registered_name("corpus", "text.corpus", "corpus") == "text.corpus"
    assert models.registered_name("enc@small", "text.x", "encoder", several=True) == (
        "text.x.encoder.small"
    )


def stage_with(*served: ServedModel) -> Stage:
    return Stage(
        "text.x", "1", dict, ("corpus",), ("model", "vocab"), lambda c, io: StageResult(),
        models=served,
    )  # fmt: skip


def test_a_served_model_must_be_an_output_with_a_module_function_loader():
    assert stage_with(ServedModel("model", "pkg.mod:load")).models[0].role == "model"
    with pytest.raises(ValueError, match=r"role 'weights' is not one of its outputs \['model'"):
        stage_with(ServedModel("weights", "pkg.mod:load"))
    for loader in ("pkg.mod.load", "pkg.mod:", ":load", "pkg.mod:load()"):
        with pytest.raises(ValueError, match="expected 'package.module:function'"):
            stage_with(ServedModel("model", loader))
    with pytest.raises(ValueError, match="two ServedModels for one output"):
        stage_with(ServedModel("model", "a:load"), ServedModel("model", "b:load"))


def test_requirements_are_pinned_to_the_installed_versions():
    pins = models.pinned(("torch", "regex"))
    assert pins == [
        f"torch=={version_of('torch')}",
        f"regex=={version('regex')}",
        f"cloudpickle=={version('cloudpickle')}",  # reads the wrapper back
    ]
    assert "+" not in pins[0]  # "2.13.0+cpu" is no version pip finds on PyPI
    with pytest.raises(models.ModelLoggingError, match="'no-such-dist' is not an installed"):
        models.pinned(("no-such-dist",))


def test_a_loader_that_does_not_resolve_is_named():
    assert models.resolve_loader("components.text.bpe.serve:load").__name__ == "load"
    with pytest.raises(models.ModelLoggingError, match="'components.text.nope:load': cannot"):
        models.resolve_loader("components.text.nope:load")
    with pytest.raises(models.ModelLoggingError, match="has no function 'lode'"):
        models.resolve_loader("components.text.bpe.serve:lode")


def test_what_a_model_server_hands_over_becomes_a_plain_list():
    assert models.plain_inputs(pd.DataFrame({"text": ["a", "b"]})) == ["a", "b"]
    assert models.plain_inputs(np.array(["a", "b"])) == ["a", "b"]
    assert models.plain_inputs(pd.Series(["a"])) == ["a"]
    words = ["a"]
    assert models.plain_inputs(words) is words
    with pytest.raises(ValueError, match=r"one column of inputs.*\['a', 'b'\]"):
        models.plain_inputs(pd.DataFrame({"a": [1], "b": [2]}))


def test_the_wrapper_is_pickled_by_reference_and_loads_what_the_loader_loads(tmp_path):
    """A logged model holds two strings and a reference to `flows.models.LoomServedModel`,
    not the wrapper's code: it loads with the code it is served with."""
    wrapper = models.LoomServedModel("tokenizer", "components.text.bpe.serve:load")
    pickled = cloudpickle.dumps(wrapper)
    assert b"flows.models" in pickled and b"LoomServedModel" in pickled
    assert b"resolve_loader" not in pickled and len(pickled) < 400
    train_bpe(["the file and the list"] * 5, vocab_size=260).save(tmp_path)

    class Context:
        artifacts = {"tokenizer": str(tmp_path)}

    loaded = cloudpickle.loads(pickled)
    loaded.load_context(Context())
    texts = ["the file", "list"]
    assert loaded.predict(Context(), pd.DataFrame({"t": texts})) == [
        BpeTokenizer.load(tmp_path).encode(t) for t in texts
    ]


def test_importing_the_module_does_not_import_mlflow_pyfunc():
    """A stage that logs no model never pays for `mlflow.pyfunc` (~0.2 s)."""
    code = "import sys, flows.models; print('mlflow.pyfunc' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr
