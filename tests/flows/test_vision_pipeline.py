"""The vision pipeline through the real spine: `dvc repro` of images -> autoencoder@{kl_digits,
kl_shapes,vq_digits} -> encode_latents at tiny sizes, each stage an MLflow run with live
curves and images, the autoencoders registered and served; a bad input fails its stage with
the file and key named and the last good outputs kept. The action pipeline rides along: its
features come from autoencoder@kl_shapes' encoder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
import yaml

from components.vision.autoencoder.latents import read_latents
from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import to_float
from components.vision.data.store import read_images
from flows import tracking
from tests.conftest import loom, reproduced_pipeline

NETWORK = {"channels": 8, "max_channels": 16, "norm_groups": 4, "downsample": 4}
TRAIN = {"steps": 6, "batch_size": 16, "val_every": 3, "checkpoint_every": 3, "log_every": 1,
         "warmup_steps": 0}  # fmt: skip
EVAL = {"grid_images": 8, "prior_samples": 8, "metric_images": 16, "scale_images": 64}
TINY_VISION = {
    "images": {"digits": {"limit": 200}, "shapes": {"shapes": {"count": 120}}},
    "autoencoder": {
        name: {"network": NETWORK, "train": TRAIN, "eval": EVAL, "quantizer": {"codebook_size": 32}}
        | ({"loss": {"disc_start": 3}} if name.startswith("kl") else {})
        for name in ("kl_digits", "kl_shapes", "vq_digits")
    },
    "train_diffusion": {
        name: {
            "unet": {"base_channels": 16, "groups": 8, "heads": 2},
            "text": {"dim": 16, "depth": 1, "heads": 2},
            "preview": {"per_prompt": 2, "sampler": {"steps": 3}},
            # 120 shapes images hold no yellow circle: hold out what they do hold
            "held_out": ["red triangle"] if name == "shapes" else [],
            "train": {
                "steps": 4,
                "batch_size": 16,
                "val_every": 2,
                "checkpoint_every": 2,
                "log_every": 1,
                "warmup_steps": 0,
            },
        }
        for name in ("digits", "shapes")
    },  # fmt: skip
    "sample": {name: {"per_prompt": 1, "sampler": {"steps": 2}} for name in ("digits", "shapes")},
    "feature_net": {
        name: {
            "network": {"channels": [8, 16], "feature_dim": 16},
            "train": {"steps": 4, "batch_size": 16, "val_every": 4, "log_every": 1},
        }
        for name in ("digits", "shapes")
    },  # fmt: skip
    "action_streams": {"frames": 300, "train_streams": 2, "val_streams": 1, "test_streams": 1,
                       "max_length": 30},
    "train_action": {
        name: {"chunk": 16, "burn_in": 4, "oadtr": {"window": 8},
               "train": {"steps": 4, "batch_size": 8, "val_every": 4, "log_every": 1,
                         "checkpoint_every": 4, "warmup_steps": 0}}
        for name in ("rnn", "gru", "lstm", "oadtr")
    },
    "evaluate_action": {"timeline": 100, "latency_frames": 20},
    "runtime": {
        "autoencoder": {"train": {"progress": False}},
        "train_diffusion": {"train": {"progress": False}},
        "feature_net": {"train": {"progress": False}},
        "train_action": {"train": {"progress": False}},
    },
}  # fmt: skip
STAGES = [
    "images@digits", "images@shapes",
    "autoencoder@kl_digits", "autoencoder@kl_shapes", "autoencoder@vq_digits",
    "encode_latents@kl_digits", "encode_latents@kl_shapes", "encode_latents@vq_digits",
    "train_diffusion@digits", "train_diffusion@shapes", "sample@digits", "sample@shapes",
    "feature_net@digits", "feature_net@shapes",
]  # fmt: skip
DETECTORS = ("rnn", "gru", "lstm", "oadtr")
ACTION_STAGES = [
    "action_streams",
    "extract_features",
    *(f"{kind}@{m}" for kind in ("train_action", "evaluate_action") for m in DETECTORS),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    # the text pipeline too: the diffusion models read its tokenizer and word2vec vectors
    return reproduced_pipeline(tmp_path_factory, "vision", TINY_VISION, also=("text", "action"))


def test_every_vision_stage_ran_as_a_tracked_run(built):
    root, runs = built
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(STAGES) <= set(lock) and set(STAGES) <= set(runs)
    metrics = yaml.safe_load((root / "metrics/autoencoder_kl_digits.json").read_text())
    assert {"psnr", "ssim", "kl", "scale_factor"} <= set(metrics["autoencoder"])
    assert (root / "data/autoencoders/kl_digits/prior_samples.png").is_file()
    plots = yaml.safe_load((root / "plots/autoencoder_vq_digits.json").read_text())
    assert [row["step"] for row in plots] == list(range(1, 7))
    assert {"train/loss/autoencoder", "train/usage"} <= set(plots[0])
    for variant in ("kl_shapes", "vq_digits"):
        latents = yaml.safe_load((root / f"metrics/encode_latents_{variant}.json").read_text())
        assert latents["encode_latents"]["train_latent_std"] == pytest.approx(1.0, abs=0.1)
    assert read_latents(root / "data/latents/vq_digits", "val").latents.shape[1:] == (4, 8, 8)
    features = yaml.safe_load((root / "metrics/feature_net_shapes.json").read_text())
    assert {"accuracy", "accuracy/shape", "accuracy/count"} <= set(features["feature_net"])


def test_the_action_stages_ran_on_the_vision_encoder_and_compare(built):
    """action_streams -> extract_features (kl_shapes' encoder) -> train_action@… ->
    evaluate_action@…, each a tracked run with its mAP; `loom compare` lines up the four."""
    root, runs = built
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(ACTION_STAGES) <= set(lock) and set(ACTION_STAGES) <= set(runs)
    deps = {d["path"] for d in lock["extract_features"]["deps"]}
    assert "data/autoencoders/kl_shapes" in deps
    features = yaml.safe_load((root / "metrics/extract_features.json").read_text())
    assert features["extract_features"] == {"dim": 320.0, "frames": 1200.0}  # 4x4x4 x (1 + 4)
    for m in DETECTORS:
        scored = runs[f"evaluate_action@{m}"].data.metrics
        assert 0 <= scored["map"] <= 1 and 0 <= scored["cmap"] <= 1 and scored["frames"] == 300
        assert (root / f"reports/action/{m}/timeline.png").is_file()
    ids = [runs[f"evaluate_action@{m}"].info.run_id for m in DETECTORS]
    res = loom(root, "compare", *ids)
    assert res.returncode == 0, res.stderr
    assert "onset_map" in res.stdout and "cmap" in res.stdout


def test_curves_and_grids_reach_mlflow_at_every_validation(built):
    _, runs = built
    client = mlflow.MlflowClient()
    run = runs["autoencoder@kl_digits"]
    psnr = client.get_metric_history(run.info.run_id, "eval/psnr")
    assert sorted(m.step for m in psnr) == [3, 6]
    disc = client.get_metric_history(run.info.run_id, "train/loss/discriminator")
    assert min(m.step for m in disc) == 4  # updates 0..2 ran before disc_start = 3
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert any("reconstructions" in p for p in images) and any("prior_samples" in p for p in images)
    vq = runs["autoencoder@vq_digits"]
    assert 0 < vq.data.metrics["codebook_usage"] <= 1 and "kl" not in vq.data.metrics


def test_autoencoders_are_registered_and_serve_latents(built):
    root, runs = built
    model = mlflow.pyfunc.load_model("models:/vision.autoencoder.kl_digits/latest")
    images = read_images(root / "data/images/digits/val.parquet").images[:4]
    latents = np.asarray(model.predict(images))
    assert latents.shape == (4, 4, 8, 8) and np.isfinite(latents).all()
    saved = Autoencoder.load(root / "data/autoencoders/kl_digits")  # scaled as the model is
    expected = saved.encode(to_float(torch.from_numpy(images).permute(0, 3, 1, 2)))
    assert np.allclose(latents, expected.numpy(), atol=1e-6)
    assert (
        runs["autoencoder@vq_digits"]
        .data.tags["loom.model.model"]
        .startswith("models:/vision.autoencoder.vq_digits/")
    )


def test_loom_compare_shows_kl_and_vq_side_by_side(built):
    root, runs = built
    ids = [runs[s].info.run_id for s in ("autoencoder@kl_digits", "autoencoder@vq_digits")]
    res = loom(root, "compare", *ids)
    assert res.returncode == 0, res.stderr
    for row in ("psnr", "codebook_usage", "kind"):
        assert row in res.stdout


def _digest(directory: Path) -> str:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return hashlib.md5(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_a_dataset_smaller_than_a_batch_fails_naming_file_and_key_and_keeps_the_model(
    built, tmp_path
):
    root = tmp_path / "proj"
    shutil.copytree(built[0], root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["autoencoder"]["kl_digits"]["train"]["batch_size"] = 1024
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = _digest(root / "data/autoencoders/kl_digits")
    res = loom(root, "stage", "autoencoder@kl_digits")
    assert res.returncode == 1
    assert "data/images/digits/train.parquet: " in res.stderr
    assert "fewer than one batch (train.batch_size = 1024)" in res.stderr
    assert _digest(root / "data/autoencoders/kl_digits") == before


def test_diffusion_models_train_live_register_and_generate(built, tmp_path):
    root, runs = built
    client = mlflow.MlflowClient()
    run = runs["train_diffusion@shapes"]
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert sum("samples" in p for p in images) >= 2  # a grid at every validation (steps 2, 4)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [
        1,
        2,
        3,
        4,
    ]
    assert run.data.tags["loom.model.model"].startswith("models:/vision.train_diffusion.shapes/")
    metrics = yaml.safe_load((root / "metrics/train_diffusion_digits.json").read_text())
    assert {"loss", "mse", "steps"} <= set(metrics["train_diffusion"])
    # the sample stage: a grid per guidance scale (10 prompts x 1 sample), in MLflow too
    samples = root / "reports/diffusion/digits/samples"
    assert sorted(p.name for p in samples.glob("guidance_*.png")) == [
        "guidance_1.png", "guidance_3.png", "guidance_5.png"
    ]  # fmt: skip
    sample_run = runs["sample@digits"].info.run_id
    assert "guidance_3.png" in {a.path for a in client.list_artifacts(sample_run)}
    # the lineage of the prompts: the text pipeline's tokenizer is an input of the run
    assert "data/tokenizers/small" in json.dumps(
        [i.dataset.source for i in run.inputs.dataset_inputs]
    )
    served = mlflow.pyfunc.load_model("models:/vision.train_diffusion.digits/latest")
    drawn = np.asarray(served.predict(["a handwritten seven", "a handwritten one"]))
    assert drawn.shape == (2, 32, 32, 1) and drawn.dtype == np.uint8
    # loom generate in the project: its newest model, or the one a run registered
    out = tmp_path / "seven.png"
    res = loom(
        root, "generate", "a handwritten seven", "-n", "2", "--steps", "3", "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    assert "data/diffusion/" in res.stdout and out.is_file()
    digits = runs["train_diffusion@digits"].info
    experiment = mlflow.get_experiment(digits.experiment_id).name
    env = {**os.environ, tracking.EXPERIMENT_ENV: experiment}  # where a run id prefix is searched
    res = loom(root, "generate", "a seven", "--run", digits.run_id[:8], "-n", "1", "--steps", "2",
               "--out", str(tmp_path / "run.png"), env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    autoencoder = runs["autoencoder@kl_digits"].info.run_id[:8]
    res = loom(root, "generate", "a seven", "--run", autoencoder, "--out", str(tmp_path / "x.png"),
               env=env)  # fmt: skip
    assert res.returncode == 1 and "registered no diffusion model" in res.stderr
    assert not (tmp_path / "x.png").exists()
