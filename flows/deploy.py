"""`loom deploy`: `prefect deploy --all` for this project, after the checks that make it safe.

Each deployment runs an exact git commit: the pull steps in prefect.yaml clone this repository
at the commit deployed (`$LOOM_GIT_COMMIT`, also the deployment's version), so a schedule's
history maps to exact code, and every MLflow run it produces carries that commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from flows import git, pools, tracking


class DeployError(RuntimeError):
    """Prefect server unreachable, a work pool missing, or prefect.yaml unreadable."""


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise DeployError(
            "PREFECT_API_URL is not set: deployments need a running Prefect server. Start one "
            "(`loom services up`) and `export PREFECT_API_URL=http://127.0.0.1:4200/api`."
        )
    return url


def check_server(url: str, timeout: float = 5.0) -> None:
    problem = tracking.probe(url.rstrip("/") + "/health", timeout)
    if problem is not None:
        raise DeployError(
            f"Prefect server {url} is unreachable ({problem}). Start it with `loom services up` "
            f"(or `prefect server start --host 127.0.0.1`)."
        )


def deployments(root: Path) -> list[dict[str, Any]]:
    path = root / "prefect.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DeployError(f"{path}: cannot read deployments: {err}") from None
    found = data.get("deployments") or []
    if not found:
        raise DeployError(f"{path}: no deployments declared")
    return found


def deploy(root: Path, names: list[str] | None = None) -> int:
    """Check, then deploy every deployment in prefect.yaml (or those in `names`)."""
    url = api_url()
    check_server(url)
    declared = deployments(root)
    chosen = [d for d in declared if not names or d.get("name") in names]
    if names and len(chosen) != len(names):
        known = [d.get("name") for d in declared]
        raise DeployError(
            f"prefect.yaml: no deployment named {sorted(set(names) - set(known))}; have {known}"
        )
    missing = pools.missing({d["work_pool"]["name"] for d in chosen if d.get("work_pool")})
    if missing:
        raise DeployError(
            f"work pool(s) {missing} do not exist on {url}: create them with `loom services up` "
            f"or `prefect work-pool create NAME --type process`."
        )
    code = git.checkout(root)
    if code.dirty:
        print(
            "loom deploy: warning: uncommitted changes are not deployed; deployments run "
            f"commit {code.commit[:12]}",
            file=sys.stderr,
        )
    env = dict(os.environ)
    env.setdefault("LOOM_PROJECT_REPO", str(root))
    env["LOOM_GIT_COMMIT"] = code.commit
    env.setdefault("MLFLOW_TRACKING_URI", tracking.tracking_uri(root))
    env.setdefault("LOOM_DVC_REMOTE", "")
    # Workers clone afresh for every run: checkpoints of interrupted training must live on
    # the worker's stable disk for a rerun to resume them.
    env.setdefault("LOOM_WORK_DIR", str(Path.home() / ".cache" / "loom" / "work"))
    env.setdefault(tracking.EXPERIMENT_ENV, tracking.DEFAULT_EXPERIMENT)
    cmd = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy"]
    cmd += [f"--name={d['name']}" for d in chosen] if names else ["--all"]
    return subprocess.run(cmd, cwd=root, env=env).returncode
