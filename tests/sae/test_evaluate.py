import pytest
import torch

from mechscope.kernels import SparseCode
from mechscope.sae.evaluate import ce_loss_recovered, evaluate


class Fixed:
    """A hand-made dictionary: latent i fires on row r iff (r + i) % period_i == 0."""

    d_in = d_dict = 4

    def encode(self, x):
        n = x.shape[0]
        r = torch.arange(n)[:, None]
        periods = torch.tensor([1, 2, 4, 10**9])  # latent 3 never fires (dead); 0 always (dense)
        on = (r % periods == 0) & (periods < 10**9)
        vals = x * on
        return SparseCode(vals, torch.arange(4).expand(n, 4).clone())

    def decode(self, code):
        return code.dense(4)

    @property
    def directions(self):
        return torch.eye(4)


def test_metrics_against_direct_computation():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 4, generator=g) + 1 for _ in range(3)]
    e = evaluate(Fixed(), batches)
    x = torch.cat(batches)
    x_hat = torch.cat([Fixed().decode(Fixed().encode(b)) for b in batches])
    sq = (x - x_hat).pow(2).sum()
    assert e.n_tokens == 24
    assert e.mse == pytest.approx(float(sq / 24), rel=1e-5)
    assert e.fvu == pytest.approx(float(sq / (x - x.mean(0)).pow(2).sum()), rel=1e-5)
    assert e.explained_variance == pytest.approx(1 - e.fvu)
    assert torch.allclose(e.density, torch.tensor([1.0, 0.5, 0.25, 0.0]))
    assert e.l0 == pytest.approx(1.75)
    assert e.dead_fraction == 0.25 and e.dense_fraction == 0.75
    counts, edges = e.log10_density_hist
    assert int(counts.sum()) == 3 and edges.shape == (51,)
    assert evaluate(Fixed(), batches, n_batches=1).n_tokens == 8
    code = torch.cat([Fixed().encode(b).dense(4) for b in batches])
    assert e.l1 == pytest.approx(float(code.abs().sum() / 24), rel=1e-5)
    assert e.cossim == pytest.approx(float(torch.cosine_similarity(x, x_hat, dim=-1).mean()), rel=1e-5)
    assert e.l2_ratio == pytest.approx(float((x_hat.norm(dim=-1) / x.norm(dim=-1)).mean()), rel=1e-5)
    gamma = float(x_hat.pow(2).sum() / (x_hat * x).sum())  # argmin_g ||x_hat / g - x||^2
    assert e.relative_reconstruction_bias == pytest.approx(gamma, rel=1e-5)


def test_relative_reconstruction_bias_measures_shrinkage():
    """A dictionary whose reconstruction is 0.8 x has bias 0.8 and l2 ratio 0.8 (Wright & Sharkey)."""

    class Shrunk(Fixed):
        def encode(self, x):
            return SparseCode(x, torch.arange(4).expand(x.shape[0], 4).clone())

        def decode(self, code):
            return 0.8 * code.dense(4)

    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1)).abs() + 0.1
    e = evaluate(Shrunk(), [x])
    assert e.relative_reconstruction_bias == pytest.approx(0.8, rel=1e-5)
    assert e.l2_ratio == pytest.approx(0.8, rel=1e-5) and e.cossim == pytest.approx(1.0, rel=1e-5)


def test_ce_loss_recovered():
    assert ce_loss_recovered(clean=2.0, spliced=2.5, zero_ablated=7.0) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="equal"):
        ce_loss_recovered(1.0, 1.0, 1.0)
