"""Vector quantizer of the VQ-VAE (van den Oord et al. 2017) with the fixes that keep a large
codebook alive.

    z [B, c, h, w] -> project to d (factorised codes) -> nearest of K codes -> project back
    -> quantized [B, c, h, w], codes [B, h, w]

- Straight-through estimator: the forward pass returns the code, the backward pass copies the
  gradient to the encoder output unchanged (`z + sg(q - z)`).
- Commitment loss β‖z − sg(q)‖² (β = 0.25) keeps the encoder near its codes.
- EMA codebook (`ema: true`, as in VQ-VAE-2): after each training step, per code k
      N_k ← γ N_k + (1 − γ) n_k            n_k: vectors assigned to k in the batch
      S_k ← γ S_k + (1 − γ) Σ_{i→k} z_i
      e_k = S_k / Ñ_k,  Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j      (Laplace smoothing)
  so a code moves to the mean of what it encodes, without a codebook loss or its LR. With
  `ema: false` the codes are parameters learnt through ‖sg(z) − q‖².
- Dead-code restart: a code whose EMA count N_k falls below `restart_threshold` is moved to a
  random one of the `recent` encoder outputs remembered, so it is used again; plain VQ-VAEs
  leave most of a 512-code book unused, this keeps almost all of it in play.
- k-means init (`kmeans_init`): the codes start as the k-means(++) centroids of the first training
  batch's encoder outputs, not as random vectors far from any of them.
- Factorised, l2-normalised codes (ViT-VQGAN, Yu et al. 2021): look up in a low-dimensional
  `code_dim` space, optionally on the unit sphere (cosine similarity), which spreads use over
  the codebook further.

Under DDP the EMA statistics (n_k, Σ z_i) are summed over ranks, so every rank's update is the
one a single process would make with the whole batch; the k-means centroids and the restart
picks (drawn from each rank's own encoder outputs) are rank 0's, broadcast at once, so the
codebook never differs between ranks, as a buffer (EMA) or as a parameter (ema: false).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from components.vision.autoencoder.config import QuantizerConfig


@dataclass
class Quantized:
    quantized: Tensor  # [B, c, h, w]: the codes (straight-through to z in backward)
    codes: Tensor  # int64 [B, h, w]
    loss: Tensor  # scalar: commitment (+ codebook loss without EMA)
    perplexity: Tensor  # scalar: exp(entropy) of this batch's code use
    usage: Tensor  # scalar: fraction of the K codes this batch used


def _from_rank_zero(*tensors: Tensor) -> None:
    """Under DDP, overwrite `tensors` in place with rank 0's (a collective: every rank calls
    it at the same point of its training forward)."""
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def code_statistics(codes: Tensor, codebook_size: int) -> tuple[float, float]:
    """(usage, perplexity) of int codes of any shape: the fraction of the K codes that occur,
    and exp(−Σ p_k log p_k) of their frequencies (K when use is uniform, 1 when one code)."""
    usage, perplexity = _statistics(codes, codebook_size)
    return float(usage), float(perplexity)


def _statistics(codes: Tensor, codebook_size: int) -> tuple[Tensor, Tensor]:
    """`code_statistics` as 0-dim tensors on the codes' device (no host sync in training)."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p * p.clamp(min=1e-300).log()).sum()  # 0 · log 0 = 0
    return (counts > 0).double().mean(), entropy.exp()


def ema_update(
    cluster_size: Tensor, embed_sum: Tensor, counts: Tensor, sums: Tensor, decay: float, eps: float
) -> Tensor:
    """One EMA step in place (see the module docstring); returns the new codebook [K, d].
    cluster_size [K], embed_sum [K, d]; counts [K] and sums [K, d] of the batch."""
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    total = cluster_size.sum()
    k = cluster_size.shape[0]
    smoothed = (cluster_size + eps) / (total + k * eps) * total
    return embed_sum / smoothed.unsqueeze(1)


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None = None):
    """Lloyd's k-means of x [N, d]: (centroids [k, d], cluster sizes [k]). Seeded by
    k-means++ (each next centroid drawn with probability ∝ its squared distance to the nearest
    one so far), so well-separated clusters each get a centroid; with N < k, k random rows
    (with replacement). An empty cluster keeps its previous centroid."""
    n = x.shape[0]
    if n < k:
        centroids = x[torch.randint(n, (k,), generator=generator).to(x.device)].clone()
    else:
        picks = [int(torch.randint(n, (1,), generator=generator))]
        nearest = (x - x[picks[0]]).pow(2).sum(1)
        for _ in range(1, k):
            weights = nearest.cpu().double()
            if float(weights.sum()) <= 0:  # fewer distinct rows than k: any row
                weights = torch.ones(n, dtype=torch.float64)
            picks.append(int(torch.multinomial(weights, 1, generator=generator)))
            nearest = torch.minimum(nearest, (x - x[picks[-1]]).pow(2).sum(1))
        centroids = x[torch.tensor(picks, device=x.device)].clone()
    counts = torch.zeros(k, device=x.device, dtype=x.dtype)
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return centroids, counts


class VectorQuantizer(nn.Module):
    """See the module docstring. forward(z [B, c, h, w]) -> `Quantized`."""

    codebook: Tensor  # [K, d]: a buffer (EMA) or a parameter
    cluster_size: Tensor  # [K] EMA counts N_k
    embed_sum: Tensor  # [K, d] EMA sums S_k
    initialized: Tensor  # bool: k-means init done
    recent: Tensor  # [recent, d] ring of encoder outputs
    recent_seen: Tensor  # int64: rows ever written to the ring

    def __init__(self, config: QuantizerConfig, channels: int):
        super().__init__()
        self.config = config
        k, d = config.codebook_size, config.code_dim or channels
        self.factorised = d != channels
        self.project_in: nn.Module = nn.Conv2d(channels, d, 1) if self.factorised else nn.Identity()
        self.project_out: nn.Module = (
            nn.Conv2d(d, channels, 1) if self.factorised else nn.Identity()
        )
        initial = torch.randn(k, d)
        if config.l2_normalize:
            initial = F.normalize(initial, dim=1)
        if config.ema:
            self.register_buffer("codebook", initial)
        else:
            self.codebook = nn.Parameter(initial)
        # EMA counts start at one each (embed_sum = code · count, so an unused code stays where
        # it is). Without k-means, a code no vector picks at the first step falls below a
        # restart threshold of 1 and restarts at an encoder output: a data-dependent init.
        self.register_buffer("cluster_size", torch.ones(k))
        self.register_buffer("embed_sum", initial.clone())
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("recent", torch.zeros(config.recent, d))
        self.register_buffer("recent_seen", torch.tensor(0, dtype=torch.int64))

    def forward(self, z: Tensor) -> Quantized:
        cfg = self.config
        flat, shape = self._flat(z)  # [N, d]
        if self.training and cfg.kmeans_init and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        book = self._book()
        codes = self._nearest(flat, book)
        q = book[codes]
        loss = cfg.beta * F.mse_loss(flat, q.detach())
        if not cfg.ema:  # the codes learn by gradient: pull them to the encoder outputs
            loss = loss + F.mse_loss(q, flat.detach())
        if self.training:
            self._remember(flat.detach())
            if cfg.ema:
                self._ema_step(flat.detach(), codes)
            if cfg.restart_threshold > 0:
                self._restart_dead()
        q_st = flat + (q - flat).detach()  # straight-through: d out / d flat = identity
        b, h, w = shape
        quantized = self.project_out(q_st.reshape(b, h, w, -1).permute(0, 3, 1, 2))
        with torch.no_grad():
            usage, perplexity = _statistics(codes, cfg.codebook_size)
        return Quantized(quantized, codes.reshape(shape), loss, perplexity, usage)

    def _flat(self, z: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        x = self.project_in(z)
        b, d, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, d)
        if self.config.l2_normalize:
            flat = F.normalize(flat, dim=1)
        return flat, (b, h, w)

    def _book(self) -> Tensor:
        book: Tensor = self.codebook
        return F.normalize(book, dim=1) if self.config.l2_normalize else book

    @staticmethod
    def _nearest(flat: Tensor, book: Tensor) -> Tensor:
        # ‖x − e‖² = ‖x‖² − 2 x·e + ‖e‖²; the ‖x‖² term does not change the argmin
        distance = book.pow(2).sum(1) - 2 * flat @ book.t()
        return distance.argmin(1)

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        cfg = self.config
        centroids, counts = kmeans(flat.float(), cfg.codebook_size, cfg.kmeans_iters)
        _from_rank_zero(centroids, counts)
        if cfg.l2_normalize:
            centroids = F.normalize(centroids, dim=1)
        self.codebook.data.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts.unsqueeze(1))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_step(self, flat: Tensor, codes: Tensor) -> None:
        cfg = self.config
        counts = torch.bincount(codes, minlength=cfg.codebook_size).to(flat.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat.to(self.embed_sum.dtype))
        if dist.is_available() and dist.is_initialized():  # the whole global batch's stats
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        book = ema_update(
            self.cluster_size, self.embed_sum, counts.float(), sums, cfg.decay, cfg.eps
        )
        self.codebook.copy_(F.normalize(book, dim=1) if cfg.l2_normalize else book)

    @torch.no_grad()
    def _remember(self, flat: Tensor) -> None:
        """Write `flat`'s rows (a random subset if more than fit) into the ring of recent
        encoder outputs."""
        size = self.recent.shape[0]
        rows = flat if flat.shape[0] <= size else flat[torch.randperm(flat.shape[0])[:size]]
        start = int(self.recent_seen) % size
        index = (torch.arange(rows.shape[0], device=flat.device) + start) % size
        self.recent[index] = rows.to(self.recent.dtype)
        self.recent_seen += rows.shape[0]

    @torch.no_grad()
    def _restart_dead(self) -> None:
        threshold = self.config.restart_threshold
        dead = self.cluster_size < threshold
        n_dead = int(dead.sum())
        filled = min(int(self.recent_seen), self.recent.shape[0])
        if n_dead == 0 or filled == 0:
            return
        picks = self.recent[torch.randint(filled, (n_dead,), device=self.recent.device)]
        _from_rank_zero(picks)  # n_dead agrees across ranks: the counts are all-reduced
        if self.config.l2_normalize:
            picks = F.normalize(picks, dim=1)
        self.codebook.data[dead] = picks
        self.cluster_size[dead] = threshold  # a restarted code gets a fresh count
        self.embed_sum[dead] = picks * threshold
