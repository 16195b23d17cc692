"""The Fréchet distance between Gaussians fitted to two feature sets (the FID formula, on
whatever features it is given):

    FD = |μ_a − μ_b|² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½)

FD shrinks with more samples and never reaches 0 for two finite samples of one distribution,
so a figure is read against the real-vs-real floor: two real sets of the same sizes.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """a [N, D], b [M, D] (N, M >= 2) -> the Fréchet distance of their Gaussian fits."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets {a.shape} and {b.shape}: expected [N, D] and [M, D]")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"{len(a)} and {len(b)} samples: a covariance needs at least 2 each")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular: handled below
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # a singular product: nudge both, as the FID code does
            eps = np.eye(a.shape[1]) * 1e-6
            root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    root = np.real(root)  # rounding leaves tiny imaginary parts
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
    return max(value, 0.0)
