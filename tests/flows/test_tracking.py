"""MLflow tracking glue against the session's real SQLite store."""

from __future__ import annotations

import threading

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from flows import tracking


def test_concurrent_runs_log_the_same_dataset(experiment, tmp_path):
    """Runs that log one dataset at the same moment (sweep points share an experiment) each
    records it. Plain `mlflow.log_input` loses this race
    (unique-key error on the dataset insert) in about a third of the rounds."""
    (tmp_path / "corpus.txt").write_text("data")
    source = resolve_dataset_source(str(tmp_path / "corpus.txt"))
    client = mlflow.MlflowClient()
    exp_id = client.create_experiment(experiment)
    threads, rounds = 4, 8
    errors: list[BaseException] = []
    logged: list[tuple[str, str]] = []  # (run id, dataset name)
    barrier = threading.Barrier(threads)

    def worker() -> None:
        for r in range(rounds):
            with mlflow.start_run(experiment_id=exp_id) as run:  # runs are thread-local
                dataset = MetaDataset(source=source, name=f"corpus-{r}", digest=f"md5-{r}")
                logged.append((run.info.run_id, dataset.name))
                barrier.wait()
                try:
                    tracking.log_input(dataset, "input", {"path": "corpus.txt"})
                except BaseException as err:
                    errors.append(err)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    assert errors == []
    assert len(logged) == threads * rounds
    for run_id, name in logged:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [i.dataset.name for i in inputs] == [name]
        assert {t.key: t.value for t in inputs[0].tags}["path"] == "corpus.txt"
