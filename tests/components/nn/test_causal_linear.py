import pytest
import torch

from components.nn.causal_linear import causal_linear_attention

EPS = 1e-6


def features(n: int, d: int, e: int, seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    """φq, φk [2, 3, n, d] (positive, as a feature map gives) and v [2, 3, n, e], leaves; the
    first key of batch 1 and the last third of its keys zeroed, as padding does."""
    gen = torch.Generator().manual_seed(seed)
    phi_q = torch.rand(2, 3, n, d, generator=gen, dtype=dtype) + 0.1
    phi_k = torch.rand(2, 3, n, d, generator=gen, dtype=dtype) + 0.1
    phi_k[1, :, 0] = 0.0
    phi_k[1, :, n - n // 3 :] = 0.0
    v = torch.randn(2, 3, n, e, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (phi_q, phi_k, v)]


def quadratic(phi_q, phi_k, v):
    """The O(N²) formula with the same floored normaliser."""
    n = phi_q.shape[-2]
    weights = (phi_q @ phi_k.transpose(-2, -1)).tril()
    return (weights @ v) / (weights @ torch.ones(n, 1, dtype=v.dtype)).clamp_min(EPS)


@pytest.mark.parametrize("n", [1, 7, 16, 37])  # chunk 16: below, equal, ragged, several
@pytest.mark.parametrize("d, e", [(4, 3), (8, 10)])  # narrow and wide states (both scans)
def test_output_and_gradients_equal_the_quadratic_formula(n, d, e):
    inputs = features(n, d, e, seed=n)
    got = causal_linear_attention(*inputs, chunk_size=16, eps=EPS)
    want = quadratic(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.all(got[1, :, 0] == 0)  # batch 1's first query sees only a zeroed key

    grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=got.dtype)
    got_grads = torch.autograd.grad(got, inputs, grad)
    want_grads = torch.autograd.grad(want, inputs, grad)
    for name, g, w in zip(("phi_q", "phi_k", "v"), got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=f"d/d{name} differs")


def test_gradcheck_with_a_ragged_last_chunk():
    inputs = features(11, 3, 2, seed=3)
    assert torch.autograd.gradcheck(
        lambda q, k, v: causal_linear_attention(q, k, v, chunk_size=4, eps=EPS), inputs
    )


def test_keys_and_queries_must_match():
    q, k, v = features(6, 2, 2, seed=0)
    with pytest.raises(ValueError, match="as many keys as queries"):
        causal_linear_attention(q, k[:, :, :5], v[:, :, :5])


def test_runs_in_float32_under_bf16_autocast():
    inputs = features(40, 8, 8, seed=4, dtype=torch.float32)
    want = quadratic(*inputs)
    bf16 = [t.detach().bfloat16().requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = causal_linear_attention(*bf16, chunk_size=16)
    assert got.dtype == torch.float32  # the running sums are not rounded to bf16
    got.sum().backward()
    assert all(t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all() for t in bf16)
    torch.testing.assert_close(got, want.detach(), rtol=0.0, atol=0.05)  # bf16 inputs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_output_and_gradients_match_float64():
    inputs = features(300, 16, 16, seed=5)
    want = quadratic(*inputs)
    grad = torch.randn(want.shape, dtype=want.dtype)
    want_grads = torch.autograd.grad(want, inputs, grad)
    cuda = [t.detach().float().cuda().requires_grad_() for t in inputs]
    got = causal_linear_attention(*cuda, chunk_size=64)
    got_grads = torch.autograd.grad(got, cuda, grad.float().cuda())
    torch.testing.assert_close(got.double().cpu(), want.detach(), rtol=1e-4, atol=1e-4)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g.double().cpu(), w, rtol=1e-3, atol=1e-4)
