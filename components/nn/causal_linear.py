"""Causal linear attention by chunks, with its backward written out.

    out_i = Σ_{j <= i} (φq_i·φk_j) v_j / Σ_{j <= i} φq_i·φk_j

The N queries are cut into M = ⌈N / C⌉ chunks of C. Inside chunk m the C×C weights
A_m = tril(Q_m K_mᵀ) are explicit; earlier chunks come in through their running sums, the
states S_m = Σ_{m' < m} K_m'ᵀ V_m' [D, E] and z_m = Σ_{m' < m} K_m'ᵀ 1 [D]:

    num_m = A_m V_m + Q_m S_m        den_m = A_m 1 + Q_m z_m

Autograd through that form works, but it keeps extra copies (V with a ones column for the
normaliser, shifted and flipped cumulative sums) and runs every product one column wider.
Here the backward is the same form run the other way — the gradient w.r.t. a chunk's keys and
values gathers the queries of *later* chunks, through the reverse running sums
R_m = Σ_{m' > m} Q_m'ᵀ dnum_m' and r_m = Σ_{m' > m} Q_m'ᵀ dden_m':

    dA_m = tril(dnum_m V_mᵀ + dden_m 1ᵀ)
    dQ_m = dA_m K_m + dnum_m S_mᵀ + dden_m z_mᵀ
    dK_m = dA_mᵀ Q_m + V_m R_mᵀ + 1 r_mᵀ
    dV_m = A_mᵀ dnum_m + K_m R_m

Twelve [C, D]-sized batched products in all, each written into its output (`baddbmm_`), and
memory O(N·C + M·D·E), never N·D·E. Computed in the inputs' dtype with autocast off: the
running sums over thousands of keys need float32, not bf16.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_linear_attention(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, chunk_size: int = 64, eps: float = 1e-6
) -> Tensor:
    """phi_q, phi_k [B, H, N, D] (feature-mapped, >= 0), v [B, H, N, E] -> [B, H, N, E].
    The normaliser is floored at `eps` (a query that sees no key returns 0)."""
    if phi_k.shape[-2] != phi_q.shape[-2]:
        raise ValueError("causal attention needs as many keys as queries")
    device = phi_q.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.promote_types(torch.promote_types(phi_q.dtype, v.dtype), torch.float32)
        phi_q, phi_k, v = phi_q.to(dtype), phi_k.to(dtype), v.to(dtype)
    with torch.autocast(device, enabled=False):
        return _CausalLinearAttention.apply(phi_q, phi_k, v, chunk_size, eps)


def _exclusive_scan(x: Tensor, reverse: bool = False) -> Tensor:
    """x [BH, M, ...] -> y with y[:, m] = Σ x[:, m'] over m' < m (over m' > m when reverse)."""
    if x.device.type != "cpu" or x[0, 0].numel() <= 64:
        if reverse:
            return x.cumsum(1).neg_().add_(x.sum(1, keepdim=True))
        return x.cumsum(1).sub_(x)
    # On CPU, cumsum over a middle dim runs ~5x slower per element for wide rows (the D×E
    # states) than M in-place adds of whole rows.
    y = torch.empty_like(x)
    m = x.shape[1]
    order = list(range(m - 1, -1, -1) if reverse else range(m))
    y[:, order[0]].zero_()
    for prev, i in itertools.pairwise(order):
        torch.add(y[:, prev], x[:, prev], out=y[:, i])
    return y


class _CausalLinearAttention(torch.autograd.Function):
    """See the module docstring. Tensors inside are chunked [BH, M, C, ·] and flattened to
    [BH·M, C, ·] for the batched products."""

    @staticmethod
    def forward(ctx, phi_q: Tensor, phi_k: Tensor, v: Tensor, chunk: int, eps: float) -> Tensor:
        b, h, n, _ = phi_q.shape
        pad = -n % chunk  # zero rows: padded keys add nothing, padded queries are dropped

        def split(t: Tensor) -> Tensor:
            t = F.pad(t, (0, 0, 0, pad)) if pad else t
            return t.reshape(b * h, -1, chunk, t.shape[-1])

        q, k, v = split(phi_q), split(phi_k), split(v)
        bh, m, c, d = q.shape
        e = v.shape[-1]
        qf, kf, vf = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
        a = torch.bmm(qf, kf.mT).tril_()  # [BH·M, C, C]
        states = _exclusive_scan(torch.bmm(kf.mT, vf).view(bh, m, d, e))
        key_sums = _exclusive_scan(k.sum(2))  # [BH, M, D]
        num = torch.bmm(qf, states.flatten(0, 1)).baddbmm_(a, vf)  # [BH·M, C, E]
        den = torch.linalg.vecdot(qf, key_sums.flatten(0, 1)[:, None, :]).add_(a.sum(-1))
        out = num.div_(den.clamp_min(eps).unsqueeze_(-1))
        ctx.save_for_backward(q, k, v, a, states, key_sums, den, out)
        ctx.pad, ctx.eps = pad, eps
        return out.view(b, h, -1, e)[:, :, :n]

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, a, states, key_sums, den, out = ctx.saved_tensors
        bh, m, c, d = q.shape
        e = v.shape[-1]
        b, h, n, _ = grad.shape
        with torch.autocast(grad.device.type, enabled=False):
            grad = F.pad(grad, (0, 0, 0, ctx.pad)) if ctx.pad else grad
            qf, kf, vf = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
            # through out = num / max(den, eps): the floor passes no gradient to den
            d_num = grad.reshape(bh * m, c, e) / den.clamp_min(ctx.eps).unsqueeze(-1)
            d_den = torch.linalg.vecdot(d_num, out).neg_().masked_fill_(den < ctx.eps, 0.0)
            d_a = torch.bmm(d_num, vf.mT).add_(d_den.unsqueeze(-1)).tril_()
            later = _exclusive_scan(torch.bmm(qf.mT, d_num).view(bh, m, d, e), reverse=True)
            later_sums = _exclusive_scan((q * d_den.view(bh, m, c, 1)).sum(2), reverse=True)
            d_q = torch.bmm(d_num, states.flatten(0, 1).mT).baddbmm_(d_a, kf)
            d_q.addcmul_(d_den.unsqueeze(-1), key_sums.flatten(0, 1).unsqueeze(1))
            d_k = torch.bmm(vf, later.flatten(0, 1).mT).baddbmm_(d_a.mT, qf)
            d_k += later_sums.flatten(0, 1).unsqueeze(1)
            d_v = torch.bmm(kf, later.flatten(0, 1)).baddbmm_(a.mT, d_num)

        def unsplit(t: Tensor) -> Tensor:
            return t.view(b, h, -1, t.shape[-1])[:, :, :n]

        return unsplit(d_q), unsplit(d_k), unsplit(d_v), None, None
