import torch

from components.vision.autoencoder.config import QuantizerConfig
from components.vision.autoencoder.quantizer import VectorQuantizer, code_statistics, ema_update


def test_straight_through_passes_the_gradient_unchanged():
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, kmeans_init=False), channels=4).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    weights = torch.randn_like(out.quantized)
    (out.quantized * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # d quantized / d z = identity
    # the forward values are codes of the book, not z
    codes = vq.codebook[out.codes.flatten()]
    assert torch.allclose(out.quantized.permute(0, 2, 3, 1).reshape(-1, 4), codes)


def test_ema_update_equals_the_hand_computed_case():
    cluster_size = torch.tensor([2.0, 1.0])
    embed_sum = torch.tensor([[4.0], [3.0]])
    counts = torch.tensor([1.0, 0.0])
    sums = torch.tensor([[10.0], [0.0]])
    book = ema_update(cluster_size, embed_sum, counts, sums, decay=0.5, eps=0.0)
    # N = (0.5*2 + 0.5*1, 0.5*1 + 0) = (1.5, 0.5); S = (0.5*4 + 0.5*10, 0.5*3) = (7, 1.5)
    assert torch.allclose(cluster_size, torch.tensor([1.5, 0.5]))
    assert torch.allclose(embed_sum, torch.tensor([[7.0], [1.5]]))
    assert torch.allclose(book, torch.tensor([[7.0 / 1.5], [1.5 / 0.5]]))
    # Laplace smoothing: (N_k + eps) / (sum N + K eps) * sum N
    cs, es = torch.tensor([1.0, 0.0]), torch.tensor([[2.0], [0.0]])
    book = ema_update(cs, es, torch.zeros(2), torch.zeros(2, 1), decay=0.5, eps=0.1)
    smoothed = (torch.tensor([0.5, 0.0]) + 0.1) / (0.5 + 0.2) * 0.5
    assert torch.allclose(book[:, 0], torch.tensor([1.0, 0.0]) / smoothed)


def test_dead_codes_restart_at_recent_encoder_outputs():
    config = QuantizerConfig(codebook_size=16, kmeans_init=False, restart_threshold=1.0)
    vq = VectorQuantizer(config, channels=2).train()
    vq.codebook.fill_(100.0)  # every code far away: one code wins every vector
    z = torch.randn(4, 2, 4, 4)
    vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    # the 15 unused codes restarted at encoder outputs of the batch
    restarted = [i for i in range(16) if not torch.allclose(vq.codebook[i], torch.tensor(100.0))]
    assert len(restarted) >= 15
    assert 0 in restarted  # the one code used: moved by its EMA update, not restarted
    for i in restarted[1:6]:
        assert (flat - vq.codebook[i]).abs().sum(1).min() < 1e-5
    usage, _ = code_statistics(vq.eval()(z).codes, 16)
    assert usage > 0.5


def test_kmeans_init_and_statistics():
    config = QuantizerConfig(codebook_size=4, kmeans_init=True, restart_threshold=0.0)
    vq = VectorQuantizer(config, channels=1).train()
    centres = torch.tensor([-6.0, -2.0, 2.0, 6.0])
    z = (centres[torch.arange(64) % 4] + 0.01 * torch.randn(64)).reshape(4, 1, 4, 4)
    vq(z)
    assert torch.allclose(vq.codebook.flatten().sort().values, centres, atol=0.1)
    usage, perplexity = code_statistics(vq.eval()(z).codes, 4)
    assert usage == 1.0 and abs(perplexity - 4.0) < 1e-6
    assert code_statistics(torch.zeros(10, dtype=torch.long), 4) == (0.25, 1.0)
