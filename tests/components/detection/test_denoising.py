import pytest
import torch
from torch import nn

from components.config import ConfigError, build
from components.detection.criterion import SetCriterion
from components.detection.denoising import (
    DUMMY_ANCHOR,
    DenoisingConfig,
    denoising_attn_mask,
    make_denoising_queries,
    split_outputs,
)
from components.detection.matcher import HungarianMatcher
from components.nn.transformer import DecoderBlock, TransformerConfig

K, Q, DIM = 4, 6, 16  # classes, matching queries, query width


def random_targets(sizes: list[int], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Boxes with centres in (0.2, 0.8) and sizes in (0.05, 0.4), so noise stays inside [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for n in sizes:
        centres = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
        wh = 0.05 + 0.35 * torch.rand(n, 2, generator=gen)
        labels = torch.randint(0, K, (n,), generator=gen)
        targets.append({"labels": labels, "boxes": torch.cat([centres, wh], dim=-1)})
    return targets


def embedding() -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(K + 1, DIM)


def queries(sizes, seed=0, **config):
    gen = torch.Generator().manual_seed(seed + 100)
    cfg = DenoisingConfig(**config)
    return make_denoising_queries(random_targets(sizes, seed), K, cfg, embedding(), Q, gen)


@pytest.mark.parametrize(
    ("key", "value"), [("groups", 0), ("label_noise", 1.5), ("box_noise", -0.1), ("box_noise", 2)]
)
def test_config_rejects_out_of_range_values(key, value):
    with pytest.raises(ConfigError, match=key):
        build(DenoisingConfig, {key: value}, where="denoising")


def test_the_mask_on_a_hand_drawn_case():
    want = torch.tensor(
        [
            [0, 0, 1, 1, 0, 0],  # group 0 (slots 0-1) sees itself and the matching queries
            [0, 0, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 0],  # group 1 (slots 2-3)
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],  # the matching queries see only each other
            [1, 1, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(denoising_attn_mask(groups=2, pad=2, num_queries=2), want)


@pytest.mark.parametrize(("groups", "pad"), [(1, 3), (3, 2), (5, 1)])
def test_the_mask_blocks_exactly_other_groups_and_denoising_for_matching(groups, pad):
    blocked = denoising_attn_mask(groups, pad, Q)
    size = groups * pad
    assert blocked.shape == (size + Q, size + Q) and blocked.dtype == torch.bool
    group = [i // pad if i < size else None for i in range(size + Q)]  # None = matching
    for i in range(size + Q):
        for j in range(size + Q):
            visible = group[j] is None or group[i] == group[j]
            assert blocked[i, j] == (not visible), (i, j)


def test_through_a_decoder_block_nothing_leaks_across_the_mask():
    torch.manual_seed(0)
    block = DecoderBlock(TransformerConfig(dim=DIM, heads=4, decoder_causal=False)).eval()
    dn = queries([3, 1, 2], groups=3)
    assert dn is not None and dn.pad == 3
    size = dn.size
    x = torch.cat([dn.content.detach(), torch.randn(3, Q, DIM)], dim=1)
    query_pos, context = torch.randn(3, size + Q, DIM), torch.randn(3, 10, DIM)

    def run(x, mask=dn.attn_mask):
        return block(x, context, None, None, query_pos, None, mask)

    out = run(x)
    every_dn_changed = x.clone()
    every_dn_changed[:, :size] += torch.randn(3, size, DIM)
    torch.testing.assert_close(run(every_dn_changed)[:, size:], out[:, size:])
    assert not torch.allclose(run(every_dn_changed, None)[:, size:], out[:, size:])  # unmasked

    group0_changed = x.clone()
    group0_changed[:, : dn.pad] += torch.randn(3, dn.pad, DIM)
    changed = run(group0_changed)
    torch.testing.assert_close(changed[:, dn.pad :], out[:, dn.pad :])  # groups 1, 2, matching
    assert not torch.allclose(changed[:, : dn.pad], out[:, : dn.pad])


def test_box_noise_stays_within_its_bounds_and_reaches_them():
    lam = 0.4
    dn = queries([50] * 8, box_noise=lam, groups=10)
    assert dn is not None
    truth = torch.stack([t["boxes"] for t in random_targets([50] * 8)])  # [B, n, 4]
    truth = truth.repeat(1, 10, 1)  # groups x the same targets, in slot order
    anchors = dn.anchors
    assert anchors.min() >= 0 and anchors.max() <= 1
    wh = truth[..., 2:]
    shift = (anchors[..., :2] - truth[..., :2]).abs() / (lam * wh / 2)  # <= 1
    scale = anchors[..., 2:] / wh  # in [1 - lam, 1 + lam]
    eps = 1e-5
    assert shift.max() <= 1 + eps and shift.max() > 0.98
    assert scale.min() >= 1 - lam - eps and scale.max() <= 1 + lam + eps
    assert scale.min() < 1 - 0.98 * lam and scale.max() > 1 + 0.98 * lam
    assert shift.mean() == pytest.approx(0.5, abs=0.02)  # |U(-1, 1)| averages 1/2


def test_clipping_keeps_boxes_inside_the_image():
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.99, 0.01, 0.9, 1.0]])}]
    gen = torch.Generator().manual_seed(0)
    config = DenoisingConfig(groups=200, box_noise=1.0)
    dn = make_denoising_queries(targets, K, config, embedding(), Q, gen)
    assert dn is not None
    assert dn.anchors.min() == 0 and dn.anchors.max() == 1  # clipped at both ends


def test_zero_noise_copies_the_ground_truth():
    sizes = [3, 1, 2]
    dn = queries(sizes, groups=2, label_noise=0.0, box_noise=0.0)
    assert dn is not None
    for i, (target, (query_idx, target_idx)) in enumerate(
        zip(random_targets(sizes), dn.matches, strict=True)
    ):
        assert torch.equal(dn.labels[i, query_idx], target["labels"][target_idx])
        torch.testing.assert_close(dn.anchors[i, query_idx], target["boxes"][target_idx])
        torch.testing.assert_close(
            dn.content[i, query_idx], embedding()(target["labels"][target_idx])
        )


@pytest.mark.parametrize("label_noise", [0.2, 0.5])
def test_labels_flip_at_the_configured_rate_to_uniform_other_classes(label_noise):
    dn = queries([100] * 4, groups=25, label_noise=label_noise)  # 10,000 labels
    assert dn is not None
    truth = torch.stack([t["labels"] for t in random_targets([100] * 4)]).repeat(1, 25)
    changed = dn.labels != truth
    assert changed.float().mean().item() == pytest.approx(label_noise, abs=0.02)  # 4 sigma
    offsets = (dn.labels - truth)[changed] % K  # 1, 2 or 3: which other class
    counts = torch.bincount(offsets, minlength=K)
    assert counts[0] == 0
    share = counts[1:].float() / changed.sum()
    torch.testing.assert_close(share, torch.full((K - 1,), 1 / (K - 1)), atol=0.03, rtol=0)


def test_a_single_class_never_flips():
    targets = random_targets([20, 5])
    for target in targets:
        target["labels"].zero_()
    config = DenoisingConfig(label_noise=1.0)
    dn = make_denoising_queries(targets, 1, config, embedding(), Q, torch.Generator())
    assert dn is not None
    assert torch.all(dn.labels[~dn.padding] == 0) and torch.all(dn.labels[dn.padding] == 1)


def test_padding_with_different_counts_and_an_empty_image():
    sizes = [3, 0, 1]
    dn = queries(sizes, groups=2)
    assert dn is not None
    assert (dn.groups, dn.pad, dn.size) == (2, 3, 6)
    assert dn.content.shape == (3, 6, DIM) and dn.anchors.shape == (3, 6, 4)
    real = torch.tensor([[1, 1, 1] * 2, [0, 0, 0] * 2, [1, 0, 0] * 2], dtype=torch.bool)
    assert torch.equal(dn.padding, ~real)
    assert torch.all(dn.labels[dn.padding] == K)
    assert torch.equal(dn.anchors[dn.padding], torch.tensor(DUMMY_ANCHOR).expand(10, 4))
    torch.testing.assert_close(dn.content[dn.padding], embedding().weight[K].expand(10, DIM))
    want = [([0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]), ([], []), ([0, 3], [0, 0])]
    for (query_idx, target_idx), (want_q, want_t) in zip(dn.matches, want, strict=True):
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert query_idx.tolist() == want_q and target_idx.tolist() == want_t
    assert dn.attn_mask.shape == (6 + Q, 6 + Q)


def test_none_without_targets_or_when_disabled():
    assert queries([0, 0]) is None
    assert queries([]) is None
    assert queries([2, 1], enabled=False) is None


def test_the_label_embedding_needs_a_padding_row():
    with pytest.raises(ValueError, match="num_classes \\+ 1 = 5"):
        make_denoising_queries(random_targets([1]), K, DenoisingConfig(), nn.Embedding(K, 8), Q)


def test_a_generator_makes_it_deterministic():
    first, again = queries([4, 2]), queries([4, 2])  # the same targets, generator seed 100
    assert first is not None and again is not None
    assert torch.equal(first.labels, again.labels) and torch.equal(first.anchors, again.anchors)
    gen = torch.Generator().manual_seed(7)
    other = make_denoising_queries(
        random_targets([4, 2]), K, DenoisingConfig(), embedding(), Q, gen
    )
    assert other is not None and not torch.equal(other.anchors, first.anchors)


def test_split_outputs_feed_the_criterion():
    sizes = [3, 0, 1]
    targets = random_targets(sizes)
    dn = queries(sizes, groups=2)
    assert dn is not None
    layers, total = 2, dn.size + Q
    logits = torch.randn(layers, 3, total, K + 1)
    boxes = torch.rand(layers, 3, total, 4) * 0.5 + 0.25
    # Perfect denoising predictions: the matched target's class and box.
    for i, (query_idx, target_idx) in enumerate(dn.matches):
        logits[:, i, query_idx] = -10.0
        logits[:, i, query_idx, targets[i]["labels"][target_idx]] = 10.0
        boxes[:, i, query_idx] = targets[i]["boxes"][target_idx]
    matching, denoising = split_outputs(logits, boxes, dn)
    assert matching["logits"].shape == (layers, 3, Q, K + 1)
    assert torch.equal(matching["boxes"], boxes[..., dn.size :, :])
    assert torch.equal(denoising["logits"], logits[..., : dn.size, :])
    assert denoising["targets"] is dn.matches
    criterion = SetCriterion(K, HungarianMatcher())
    last_dn = {k: v[-1] if k != "targets" else v for k, v in denoising.items()}
    losses = criterion({"logits": matching["logits"][-1], "boxes": matching["boxes"][-1],
                        "dn": last_dn}, targets)  # fmt: skip
    assert losses["loss_bbox_dn"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou_dn"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_bbox"].item() > 0.01  # the matching queries are random
