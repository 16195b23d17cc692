"""Where users run Loom: real Prefect and MLflow servers and a process worker on loopback,
deployments from prefect.yaml, a run triggered through the API and executed by the worker in a
fresh clone of the deployed commit, outputs pushed to the DVC remote. Stopped by PID at the end."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml

from flows import services
from tests.conftest import ALL_STAGES, dvc, flow_run_logs, git, loom, make_project

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Prefect server + MLflow server + one worker on pool `cpu`, for this module."""
    state = tmp_path_factory.mktemp("services")
    ports = {"prefect_port": free_port(), "mlflow_port": free_port()}
    try:
        services.up(state, host="127.0.0.1", workers=["cpu"], gpu_slots=0, **ports)
        yield state, services.service_env(state), ports
    finally:
        pids = [s.pid for s in services.status(state) if s.pid]
        services.down(state)
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        assert not alive, f"processes left behind: {alive}"


def _env(stack_env: dict[str, str], remote: Path) -> dict[str, str]:
    return {
        **os.environ,
        **stack_env,
        "LOOM_DVC_REMOTE": str(remote),
        "LOOM_EXPERIMENT": "deployed",
        # the workers' resumable stage work, off the home directory
        "LOOM_WORK_DIR": str(remote.parent / "work"),
    }


def test_deployment_runs_on_a_worker_with_lineage_and_remote(stack, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _, stack_env, _ = stack
    remote = tmp_path / "remote"
    root = make_project(tmp_path / "proj")
    head = git(root, "rev-parse", "HEAD").strip()
    env = _env(stack_env, remote)

    res = loom(root, "deploy", env=env)
    assert res.returncode == 0, res.stdout + res.stderr

    with temporary_settings({PREFECT_API_URL: stack_env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("loom-pipeline/text-nightly")
            assert dep.version == head
            # The server's scheduler creates the cron deployment's upcoming runs.
            deadline, scheduled = time.time() + 120, []
            while not scheduled and time.time() < deadline:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
                )
                scheduled = [r for r in runs if r.state.is_scheduled()]
                time.sleep(2)
            assert scheduled and all(r.expected_start_time.hour == 2 for r in scheduled)
        run = run_deployment("loom-pipeline/text-nightly", timeout=600, poll_interval=2)
        if not run.state.is_completed():  # the stage's own output says why; the state is cut short
            logs = "\n".join(log.message for log in flow_run_logs(str(run.id))[-60:])
            pytest.fail(f"{run.state.message}\n--- last flow-run logs ---\n{logs}")

    client = mlflow.MlflowClient(stack_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("deployed")
    runs = client.search_runs([exp.experiment_id], f"tags.`prefect.flow_run_id` = '{run.id}'")
    stages = {r.data.tags.get("loom.stage") for r in runs} - {None}
    assert stages == set(ALL_STAGES)
    assert all(r.data.tags["loom.git.commit"] == head for r in runs)
    assert all(r.info.status == "FINISHED" for r in runs)

    # What the worker trained, a laptop pulls: the run's dvc.lock from MLflow, data from DVC.
    (parent,) = [r for r in runs if r.data.tags.get("loom.pipeline") == "true"]
    assert parent.data.tags["loom.dvc_pushed"] == "true"
    assert not (root / "dvc.lock").exists()  # the worker ran in its own clone
    laptop = tmp_path / "laptop"
    subprocess.run(["git", "clone", "-q", str(root), str(laptop)], check=True)
    res = loom(laptop, "pull", "--run", parent.info.run_id, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (laptop / "data" / "tokens" / "small" / "train.parquet").exists()
    assert "up to date" in dvc(laptop, "status").stdout


def test_deploy_refuses_without_server_or_pool(stack, tmp_path):
    _, stack_env, _ = stack
    root = make_project(tmp_path / "proj")
    res = loom(root, "deploy")  # no PREFECT_API_URL in this environment
    assert res.returncode == 1 and "PREFECT_API_URL is not set" in res.stderr
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    res = loom(root, "deploy", env=env)
    assert res.returncode == 1 and "http://127.0.0.1:9/api is unreachable" in res.stderr
    text = (root / "prefect.yaml").read_text().replace("name: gpu", "name: gpu-missing")
    (root / "prefect.yaml").write_text(text)
    res = loom(root, "deploy", env={**os.environ, **stack_env})
    assert res.returncode == 1 and "['gpu-missing'] do not exist" in res.stderr
    assert dvc(root, "status").returncode == 0


GPU_DEPLOYMENT = """
  - name: slot-probe
    entrypoint: flows/pipeline.py:pipeline
    parameters: {targets: [stdlib_text], force: true}
    work_pool:
      name: gpu
      job_variables:
        env: *env
"""


def test_one_gpu_never_runs_two_flow_runs(stack, tmp_path):
    """Two simulated GPU slots (one worker each, CUDA_VISIBLE_DEVICES=0/1, limit 1): four runs
    spread over both slots and never overlap on one."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    state, stack_env, ports = stack
    services.up(state, host="127.0.0.1", workers=["cpu"], gpu_slots=2, **ports)
    root = make_project(tmp_path / "proj")
    with (root / "prefect.yaml").open("a") as f:
        f.write(GPU_DEPLOYMENT)
    git(root, "commit", "-qam", "slot probe deployment")
    env = _env(stack_env, tmp_path / "remote")
    res = loom(root, "deploy", "slot-probe", env=env)
    assert res.returncode == 0, res.stdout + res.stderr

    with temporary_settings({PREFECT_API_URL: stack_env["PREFECT_API_URL"]}):
        runs = [run_deployment("loom-pipeline/slot-probe", timeout=0) for _ in range(4)]
        deadline = time.time() + 600
        with get_client(sync_client=True) as client:
            while time.time() < deadline:
                states = [client.read_flow_run(r.id).state for r in runs]
                if all(s.is_final() for s in states):
                    break
                time.sleep(2)
    assert all(s.is_completed() for s in states), states

    client = mlflow.MlflowClient(stack_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("deployed")
    ids = {str(r.id) for r in runs}
    parents = [
        r
        for r in client.search_runs([exp.experiment_id], "tags.`loom.pipeline` = 'true'")
        if r.data.tags.get("prefect.flow_run_id") in ids
    ]
    assert len(parents) == 4
    slots: dict[str, list[tuple[int, int]]] = {}
    for run in parents:
        slot = run.data.tags["loom.cuda_visible_devices"]
        slots.setdefault(slot, []).append((run.info.start_time, run.info.end_time))
    assert set(slots) == {"0", "1"}
    for spans in slots.values():
        spans.sort()
        assert all(
            a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)
        )


def _kill_tree(proc: psutil.Process) -> None:
    for p in [*proc.children(recursive=True), proc]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def test_killed_worker_then_rerun_skips_completed_stages(stack, tmp_path):
    """Kill the worker and its flow run mid-pipeline; re-running that flow run (on a new
    worker, in a fresh clone) restores the dvc.lock its first attempt logged and skips the
    stages that attempt finished."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    state, stack_env, ports = stack
    services.up(state, host="127.0.0.1", workers=["cpu"], **ports)
    root = make_project(tmp_path / "proj")
    env = _env(stack_env, tmp_path / "remote")
    assert loom(root, "deploy", "text-nightly", env=env).returncode == 0
    client = mlflow.MlflowClient(stack_env["MLFLOW_TRACKING_URI"])

    def stage_runs(flow_run_id: str) -> list:
        exp = client.get_experiment_by_name("deployed")
        if exp is None:  # the first stage has not started yet
            return []
        query = f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
        return [
            r for r in client.search_runs([exp.experiment_id], query) if "loom.stage" in r.data.tags
        ]

    def published(flow_run_id: str) -> set[str]:
        """Stages in the dvc.lock the (first) attempt logged: those it finished for good."""
        exp = client.get_experiment_by_name("deployed")
        query = f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`loom.pipeline` = 'true'"
        for run in client.search_runs([exp.experiment_id], query) if exp else []:
            with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as tmp:
                lock = client.download_artifacts(run.info.run_id, "dvc.lock", tmp)
                return set(yaml.safe_load(Path(lock).read_text())["stages"])
        return set()

    with temporary_settings({PREFECT_API_URL: stack_env["PREFECT_API_URL"]}):
        run = run_deployment("loom-pipeline/text-nightly", timeout=0)
        deadline = time.time() + 300
        while "corpus" not in published(str(run.id)) and time.time() < deadline:
            time.sleep(0.5)
        assert "corpus" in published(str(run.id))
        # The worker dies, and its flow-run process with it.
        for svc in services.status(state):
            if svc.name.startswith("worker-cpu") and svc.pid:
                _kill_tree(psutil.Process(svc.pid))
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("PREFECT__FLOW_RUN_ID") == str(run.id):
                    _kill_tree(proc)
        first = published(str(run.id))
        assert first != set(ALL_STAGES), "the pipeline finished before the worker was killed"

        with get_client(sync_client=True) as prefect:
            # No more heartbeats: the server's zombie automation marks the run Crashed.
            deadline = time.time() + 300
            while not prefect.read_flow_run(run.id).state.is_crashed() and time.time() < deadline:
                time.sleep(3)
            assert prefect.read_flow_run(run.id).state.is_crashed()
            # The UI's "Retry": the same flow run, scheduled again.
            prefect.set_flow_run_state(run.id, Scheduled(), force=True)
            services.up(state, host="127.0.0.1", workers=["cpu"], **ports)  # a new worker
            deadline = time.time() + 600
            while time.time() < deadline:
                final = prefect.read_flow_run(run.id).state
                if final.is_final():
                    break
                time.sleep(2)
    assert final.is_completed(), final

    finished: dict[str, int] = {}
    for r in stage_runs(str(run.id)):
        if r.info.status == "FINISHED":
            finished[r.data.tags["loom.stage"]] = finished.get(r.data.tags["loom.stage"], 0) + 1
    assert set(finished) == set(ALL_STAGES)
    assert all(finished[s] == 1 for s in first)  # published before the kill: not run again


def test_sweep_on_a_pool(stack, tmp_path):
    """`loom sweep --pool`: each grid point is a run of the deployment on the pool's worker."""
    state, stack_env, ports = stack
    services.up(state, host="127.0.0.1", workers=["cpu"], **ports)
    root = make_project(tmp_path / "proj")
    env = _env(stack_env, tmp_path / "remote")
    assert loom(root, "deploy", "text-nightly", env=env).returncode == 0
    grid = ["-S", "bpe.small.vocab_size=300,320"]
    res = loom(
        root,
        "sweep",
        *grid,
        "tokenize@small",
        "--pool",
        "loom-pipeline/text-nightly",
        "--metric",
        "bytes_per_token",
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    sweep_id = re.search(r"sw-[0-9a-f]{8}", res.stdout + res.stderr).group(0)

    client = mlflow.MlflowClient(stack_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("deployed")
    runs = client.search_runs([exp.experiment_id], f"tags.`loom.sweep_id` = '{sweep_id}'")
    pipelines = [r for r in runs if r.data.tags.get("loom.pipeline") == "true"]
    assert len(pipelines) == 2 and all(r.info.status == "FINISHED" for r in pipelines)
    bpe = [r for r in runs if r.data.tags.get("loom.stage") == "bpe@small"]
    assert sorted(r.data.params["vocab_size"] for r in bpe) == ["300", "320"]
    assert not (root / "dvc.lock").exists()  # points ran on the worker, not here
