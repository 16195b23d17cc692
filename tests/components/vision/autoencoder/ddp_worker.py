"""One rank of the autoencoder stage under torchrun, for test_ddp.py:

    torchrun --nproc_per_node 2 -m tests.components.vision.autoencoder.ddp_worker IMAGES OUT KIND

Runs the stage (rank 0 writes OUT/model) and saves this rank's trained network to
OUT/rank<r>.safetensors, so the test can check that the ranks agree."""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from components.config import build
from components.stage import StageIO
from components.train import distributed
from components.vision.autoencoder import stage as autoencoder_stage

STEPS = 6


def config(kind: str):
    return build(
        autoencoder_stage.AutoencoderConfig,
        {
            "kind": kind,
            "network": {"channels": 8, "max_channels": 16, "norm_groups": 4},
            "quantizer": {"codebook_size": 64, "restart_threshold": 1.0, "kmeans_init": True},
            "loss": {"discriminator": kind == "kl", "disc_start": 2},
            "eval": {"grid_images": 4, "prior_samples": 4, "metric_images": 8},
            "train": {"steps": STEPS, "batch_size": 16, "lr": 2e-3, "val_every": 3,
                      "log_every": 1, "progress": False, "seed": 1},
        },
    )  # fmt: skip


def main() -> None:
    images, out, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    captured = {}
    original = autoencoder_stage.train

    def keep(*args, **kwargs):  # the stage's own call of the engine; keep its result
        captured["result"] = original(*args, **kwargs)
        return captured["result"]

    autoencoder_stage.train = keep
    io = StageIO({"images": images}, {"model": out / "model"})
    autoencoder_stage.STAGE.run(config(kind), io)
    network = captured["result"].model.autoencoder
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, out / f"rank{distributed.detect().rank}.safetensors")


if __name__ == "__main__":
    main()
