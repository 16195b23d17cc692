"""Loom's DETR on shapes-det and digits-det: each convergence switch against plain DETR at one
budget, softmax vs linear attention, and Loom vs transformers' DetrForObjectDetection.

    .venv/bin/python benchmarks/detection.py [--steps 800] [--sets shapes digits]
        [--variants plain dab dab_dn dab_roi default focal linear transformers] [--threads 2]
        [--device cpu|cuda] [--json out.json] [--profile]

Needs the `test` extra (transformers, for the reference) when the `transformers` variant runs.

Data: the default pipeline's detection sets (params.yaml `detection_data.<set>`), generated
here in memory by the same code as the `detection_data` stage: train/val by its hash split, so
the val images are ones no model saw. Every variant trains from `torch.manual_seed(0)` through
the one training engine (`components.train`) with the params.yaml `detector.<set>` recipe —
AdamW, warmup then cosine, the same batches — for `--steps` steps; only the model switches
differ. AP is pycocotools' COCOeval on the whole val set (top 100 per image).

Variants (model switches over params.yaml's `detector.<set>.model`):
  plain         DETR: learned queries, boxes predicted outright, no denoising, no RoI
  dab           + DAB-DETR anchor boxes refined layer by layer
  dab_dn        + DN-DETR denoising queries
  dab_roi       + RoI features (anchors, no denoising)
  default       anchors + denoising + RoI features (params.yaml)
  focal         the default with sigmoid focal loss
  linear        the default with linear attention (no denoising: its mask needs softmax)
  transformers  transformers' DetrForObjectDetection at Loom's plain-DETR size (d_model,
                layers, heads, FFN, queries; a 2-stage ResNet of the same widths, stride 8;
                random init), trained on the same batches with the same optimizer, LR schedule
                and clipping; its own loss (the same matcher costs and weights); compared with
                `plain`, the recipe it implements

Reported per variant: seconds per train step (mean of all steps after the first 10), AP, AP50,
AP75 and AR@100, and the ratios the targets name: transformers' s/step over Loom's, Loom's AP
over transformers'.

--profile: instead of training to the end, each variant runs `--steps` steps (say 60) under
torch.profiler, and the CPU time of its operators is printed grouped by kind (convolutions
with their backward, matrix products, attention kernels, normalisation, elementwise and the
rest) with the top operators: where a variant's time per step goes, measured.

Targets (issue 17): after <= 20 minutes of CPU training, AP50 >= 0.9 and AP >= 0.6 on
shapes-det, AP50 >= 0.85 on digits-det; Loom >= 1.0x transformers on time per step and AP.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from components.config import build, identity
from components.detection.config import DetectorConfig
from components.detection.data import synthetic
from components.detection.data.config import DetectionDataConfig
from components.detection.data.dataset import DetectionRecord, collate
from components.detection.evaluate import coco_metrics, ground_truth, results_json
from components.detection.postprocess import postprocess
from components.detection.stage import coco_scores
from components.detection.task import DetrTask
from components.train import train
from components.train.data import BatchPlan
from components.train.schedule import lr_at

ROOT = Path(__file__).resolve().parent.parent
SWITCHES: dict[str, dict[str, Any]] = {
    "plain": {"anchors": False, "roi_points": 0, "denoising": {"enabled": False}},
    "dab": {"anchors": True, "roi_points": 0, "denoising": {"enabled": False}},
    "dab_dn": {"anchors": True, "roi_points": 0, "denoising": {"enabled": True}},
    "dab_roi": {"anchors": True, "roi_points": 4, "denoising": {"enabled": False}},
    "default": {},
    "focal": {"loss": {"class_loss": "focal"}},
    "linear": {"attention": "linear", "denoising": {"enabled": False}},
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merge(base[key], value) if both else value
    return out


def records(name: str) -> tuple[list[DetectionRecord], list[DetectionRecord], tuple[str, ...]]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    config = build(DetectionDataConfig, params["detection_data"][name])
    split: dict[str, list[DetectionRecord]] = {"train": [], "val": []}
    for index, which, image in synthetic.generate(config):
        split[which].append(DetectionRecord.from_image(index, image))
    return split["train"], split["val"], tuple(synthetic.class_names(config))


def recipe(name: str, variant: str, steps: int) -> DetectorConfig:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["detector"][name]
    params = merge(params, {"model": SWITCHES.get(variant, SWITCHES["plain"])})
    every = max(steps, 1)
    params["train"] |= {"steps": steps, "progress": False, "val_every": every,
                        "checkpoint_every": every, "log_every": 10}  # fmt: skip
    return build(DetectorConfig, params)


def run_loom(
    config: DetectorConfig, train_r, val_r, classes, device: str, profiler=None
) -> dict[str, float]:
    torch.manual_seed(0)
    task = DetrTask(config, len(classes), train_r, val_r[:8])
    stamps: list[float] = []

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        stamps.append(time.perf_counter())

    runtime = build(
        type(config.train), {**identity(config.train), "device": device, "progress": False}
    )
    with profiler or contextlib.nullcontext():
        result = train(task, runtime, on_metrics=on_metrics)  # type: ignore[arg-type]
    network = result.model
    scores = coco_scores(network, val_r, classes, 100)
    # one stamp per 10 steps (log_every); the first interval holds the warm-up
    per_step = (stamps[-1] - stamps[1]) / (10 * (len(stamps) - 2)) if len(stamps) > 2 else 0.0
    return {"s_per_step": per_step, **scores,
            "parameters": float(sum(p.numel() for p in network.parameters()))}  # fmt: skip


def run_transformers(
    config: DetectorConfig, train_r, val_r, classes, device: str, profiler=None
) -> dict:
    """DetrForObjectDetection at the size of Loom's plain DETR, on the engine's batches."""
    from transformers import DetrConfig as HfDetrConfig
    from transformers import DetrForObjectDetection, ResNetConfig

    model_cfg = config.model
    widths = list(model_cfg.backbone.channels)
    stages = max(len(widths) - 1, 1)  # + the embedder's stride 4: Loom's stride 2^len(widths)
    backbone = ResNetConfig(embedding_size=widths[0], hidden_sizes=widths[1:] or widths,
                            depths=[model_cfg.backbone.blocks] * stages, layer_type="basic",
                            out_features=[f"stage{stages}"])  # fmt: skip
    hf_config = HfDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
        num_labels=len(classes), d_model=model_cfg.dim, encoder_layers=model_cfg.encoder_layers,
        decoder_layers=model_cfg.decoder_layers, encoder_attention_heads=model_cfg.heads,
        decoder_attention_heads=model_cfg.heads,
        encoder_ffn_dim=int(model_cfg.dim * model_cfg.mlp_ratio),
        decoder_ffn_dim=int(model_cfg.dim * model_cfg.mlp_ratio),
        num_queries=model_cfg.num_queries, dropout=model_cfg.dropout, auxiliary_loss=True,
        eos_coefficient=model_cfg.loss.eos_coef,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DetrForObjectDetection(hf_config).to(device).train()
    task = DetrTask(config, len(classes), train_r, val_r[:8])  # Loom's batches, augmentations
    tc = config.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    plan = BatchPlan(len(task.train_data), tc.batch_size, seed=tc.seed)  # the engine's order

    def batches():
        epoch = 0
        while True:
            for indices in plan.micro_batches(epoch):
                yield task.collate([task.train_data[i] for i in indices])
            epoch += 1

    loader = batches()
    times = []
    with profiler or contextlib.nullcontext():
        for step in range(tc.steps):
            start = time.perf_counter()  # the batch's making counts, as it does in Loom's engine
            batch = next(loader)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, tc)
            labels = [{"class_labels": t["labels"].to(device), "boxes": t["boxes"].to(device)}
                      for t in batch.targets]  # fmt: skip
            pixel_mask = (~batch.mask).long().to(device)  # HF: 1 = a real pixel
            out = model(pixel_values=batch.images.to(device), pixel_mask=pixel_mask, labels=labels)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
            optimizer.step()
            times.append(time.perf_counter() - start)
    model.eval()
    found = []
    with torch.no_grad():
        from components.detection.data.dataset import DetectionDataset

        data = DetectionDataset(val_r)
        for start in range(0, len(val_r), 32):
            b = collate([data[i] for i in range(start, min(start + 32, len(val_r)))])
            out = model(pixel_values=b.images.to(device), pixel_mask=(~b.mask).long().to(device))
            sizes = torch.stack([t["orig_size"] for t in b.targets]).to(device)
            found += postprocess(out.logits, out.pred_boxes, sizes, 100)
    scores, _ = coco_metrics(ground_truth(val_r, classes),
                             results_json([r.image_id for r in val_r], found))  # fmt: skip
    return {"s_per_step": sum(times[10:]) / max(len(times) - 10, 1), **scores,
            "parameters": float(sum(p.numel() for p in model.parameters()))}  # fmt: skip


# operator-name fragments -> the kind a profile groups them into (first match wins)
OP_KINDS = (
    ("convolution", ("conv", "mkldnn")),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("attention", ("scaled_dot_product", "softmax")),
    ("norm", ("group_norm", "layer_norm", "batch_norm", "native_norm")),
    ("optimizer", ("_foreach", "adamw", "lerp", "addcdiv", "addcmul")),
)


def op_kind(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in OP_KINDS:
        if any(fragment in lowered for fragment in fragments):
            return kind
    return "other"


@contextlib.contextmanager
def profiled(label: str, steps: int, enabled: bool) -> Iterator[None]:
    """Profile the block's CPU operators and print their self time per step, grouped by kind."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    by_kind: dict[str, float] = defaultdict(float)
    for event in events:
        by_kind[op_kind(event.key)] += event.self_cpu_time_total / 1e6 / steps
    total = sum(by_kind.values())
    shares = ", ".join(
        f"{kind} {seconds * 1e3:.1f} ms ({seconds / total:.0%})"
        for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1])
    )
    print(f"  profile {label}: aten self time {total * 1e3:.1f} ms/step: {shares}")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
        per_step = event.self_cpu_time_total / 1e3 / steps
        print(f"      {event.key:48s} {per_step:7.2f} ms/step  x{event.count / steps:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--sets", nargs="+", default=["shapes", "digits"])
    parser.add_argument("--variants", nargs="+", default=[*SWITCHES, "transformers"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", action="store_true", help="operator time by kind")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.device}, {args.steps} steps")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.sets:
        train_r, val_r, classes = records(name)
        print(
            f"\n{name}-det: {len(train_r)} train, {len(val_r)} val images, {len(classes)} classes"
        )
        table[name] = {}
        for variant in args.variants:
            config = recipe(name, "plain" if variant == "transformers" else variant, args.steps)
            runner = run_transformers if variant == "transformers" else run_loom
            started = time.perf_counter()
            profiler = profiled(variant, args.steps, args.profile)
            row = runner(config, train_r, val_r, classes, args.device, profiler)
            row["train_minutes"] = (time.perf_counter() - started) / 60
            table[name][variant] = row
            print(f"  {variant:13s} {row['s_per_step']:.3f} s/step  AP {row['ap']:.3f}  "
                  f"AP50 {row['ap50']:.3f}  AP75 {row['ap75']:.3f}  AR100 {row['ar100']:.3f}  "
                  f"({row['parameters'] / 1e6:.2f} M params, {row['train_minutes']:.1f} min)",
                  flush=True)  # fmt: skip
        rows = table[name]
        if "transformers" in rows and "plain" in rows:
            hf, ours = rows["transformers"], rows["plain"]
            speed = hf["s_per_step"] / max(ours["s_per_step"], 1e-9)
            ap = ours["ap"] / hf["ap"] if hf["ap"] > 0 else float("inf")
            print(f"  Loom plain vs transformers: {speed:.2f}x time per step, AP ratio {ap:.2f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
