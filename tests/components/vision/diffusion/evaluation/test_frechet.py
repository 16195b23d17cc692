import numpy as np
import pytest

from components.vision.diffusion.evaluation.frechet import frechet_distance


def _reference(a, b):
    """The formula through eigenvalues: tr (Σa Σb)^½ = Σ √λ(Σa Σb) (real, >= 0 for PSD)."""
    mu = a.mean(0) - b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    roots = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None))
    return mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * roots.sum()


def test_matches_the_formula_and_its_parts():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) * 2.0 + 1.0
    assert frechet_distance(a, b) == pytest.approx(_reference(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([3.0, 0, 0, 4.0, 0, 0])  # moving one set adds |shift|² = 25
    assert frechet_distance(a, a + shift) == pytest.approx(25.0, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_a_singular_covariance_still_gives_a_finite_distance():
    rng = np.random.default_rng(1)
    a = np.zeros((50, 4))
    a[:, 0] = rng.normal(size=50)  # rank 1
    assert np.isfinite(frechet_distance(a, rng.normal(size=(50, 4))))


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [((5, 3), (5, 4), r"expected \[N, D\] and \[M, D\]"), ((1, 3), (5, 3), "at least 2 each")],
)
def test_bad_shapes_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(np.zeros(a), np.ones(b))
