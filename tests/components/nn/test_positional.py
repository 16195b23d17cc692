import math

import pytest
import torch

from components.nn.positional import SinePosition2d


def sine_2d_by_formula(mask, dim, temperature=10000.0, normalize=False, scale=2 * math.pi):
    """The module docstring's formula, one value at a time: bool [B, H, W] -> [B, dim, H, W]."""
    b, h, w = mask.shape
    unpadded = (~mask).tolist()
    per_axis = dim // 2
    out = torch.empty(b, dim, h, w, dtype=torch.float64)
    for n in range(b):
        for r in range(h):
            for c in range(w):
                y = sum(unpadded[n][r2][c] for r2 in range(r + 1))  # 1-based counts
                x = sum(unpadded[n][r][c2] for c2 in range(c + 1))
                if normalize:
                    y = y / (sum(unpadded[n][r2][c] for r2 in range(h)) + 1e-6) * scale
                    x = x / (sum(unpadded[n][r][c2] for c2 in range(w)) + 1e-6) * scale
                for k in range(dim):
                    count, j = (y, k) if k < per_axis else (x, k - per_axis)
                    angle = count / temperature ** (2 * (j // 2) / per_axis)
                    out[n, k, r, c] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return out


def padded_mask() -> torch.Tensor:
    """bool [2, 5, 7]: image 0 unpadded; image 1 of 3 × 4 pixels padded to 5 × 7."""
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:] = True
    mask[1, :, 4:] = True
    return mask


def test_shapes_and_the_size_form():
    pe = SinePosition2d(16)
    mask = padded_mask()
    grid = pe(mask)
    assert grid.shape == (2, 16, 5, 7) and grid.dtype == torch.float32
    flat = pe(mask, flatten=True)
    assert flat.shape == (2, 35, 16)
    # Row-major tokens, as a feature map [B, C, H, W] flattens into them.
    torch.testing.assert_close(flat, grid.flatten(2).transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(pe((5, 7), device="cpu"), grid[:1], rtol=0, atol=0)
    assert pe((5, 7), flatten=True).shape == (1, 35, 16)


def test_a_hand_computed_case():
    # dim 4: one (sin, cos) pair per axis at frequency T^0 = 1; counts are 1-based.
    pe = SinePosition2d(4)((1, 2))
    s1, c1, s2, c2 = math.sin(1), math.cos(1), math.sin(2), math.cos(2)
    torch.testing.assert_close(pe[0, :, 0, 0], torch.tensor([s1, c1, s1, c1]))
    torch.testing.assert_close(pe[0, :, 0, 1], torch.tensor([s1, c1, s2, c2]))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("temperature", [10000.0, 20.0])
def test_values_equal_the_formula(normalize, temperature):
    mask = padded_mask()
    got = SinePosition2d(16, temperature=temperature, normalize=normalize)(mask)
    want = sine_2d_by_formula(mask, 16, temperature, normalize).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_padding_leaves_the_image_positions_unchanged(normalize):
    """DETR's point: a padded image's pixels get the positions they would have alone."""
    pe = SinePosition2d(16, normalize=normalize)
    torch.testing.assert_close(pe(padded_mask())[1, :, :3, :4], pe((3, 4))[0])


def test_normalize_spans_the_same_angles_at_every_size():
    pe = SinePosition2d(4, normalize=True, scale=1.0)  # frequency 1: the angle is the count
    small, large = pe((3, 5)), pe((6, 10))
    # The last pixel of each: count / length = 1, so angle 1 on both axes.
    want = torch.tensor([math.sin(1), math.cos(1)] * 2)
    torch.testing.assert_close(small[0, :, -1, -1], want)
    torch.testing.assert_close(large[0, :, -1, -1], want)
    # Halfway (row 3 of 6, column 5 of 10) the angles are 1/2.
    torch.testing.assert_close(large[0, :, 2, 4], torch.tensor([math.sin(0.5), math.cos(0.5)] * 2))
    unnormalized = SinePosition2d(4)((6, 10))
    assert not torch.allclose(unnormalized[0, :, -1, -1], want)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="multiple of 4, got 6"):
        SinePosition2d(6)
    with pytest.raises(ValueError, match="must be > 0"):
        SinePosition2d(8, temperature=0.0)
