"""Codebook features: an activation replaced by a sum of k learned codes.

Tamkin et al. 2023, "Codebook Features: Sparse and Discrete Interpretability for Neural
Networks". With codebook C = W_dec ``[d_dict, d]`` and cosine similarity s_j = <x, c_j> /
(||x|| ||c_j||):

    S(x) = the k indices with largest s_j,     x̂ = Σ_{j ∈ S(x)} c_j

The code values are all 1. Selection has no gradient; the codes learn from the reconstruction
(VQ codebook loss ``||sg(x) − x̂||²``), and when x itself is trainable (the codebook spliced into a
model) a commitment term ``β ||x − sg(x̂)||²`` pulls activations toward their codes while
`straight_through` passes the downstream gradient to x unchanged (van den Oord et al. 2017).
Codes that have not been selected for ``dead_tokens`` tokens are replaced by randomly chosen
activations of the current batch (dead-code replacement).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechscope.kernels import SparseCode, sparse_decode, topk_encode
from mechscope.sae.base import LossOutput, SparseDictionary, mse
from mechscope.sae.config import CodebookConfig, DictionaryConfig, TrainConfig


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _nonzero_rows(x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` random row indices of ``x`` (with replacement) among rows that are not zero."""
    # drawn on the CPU with the run's CPU generator: the same rows on every device
    weight = (x.norm(dim=-1) > 0).double().cpu()
    if weight.sum() == 0:
        weight = torch.ones_like(weight)
    return torch.multinomial(weight, n, replacement=True, generator=generator).to(x.device)


class CodebookDictionary(SparseDictionary):
    architecture = "codebook"
    config_class = CodebookConfig
    unit_norm_decoder = False

    def __init__(self, cfg: DictionaryConfig, train: TrainConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, train, generator)
        self.b_dec.requires_grad_(False)  # a codebook output is a plain sum of codes

    def _encode(self, x: Tensor) -> SparseCode:
        with torch.no_grad():
            sel = topk_encode(_unit(x), _unit(self.W_dec), x.new_zeros(self.d_dict), self.cfg.k,
                              relu=False)
        return SparseCode(torch.ones_like(sel.values), sel.indices)

    def straight_through(self, x: Tensor) -> Tensor:
        """Forward value x̂ (normalised units); gradient to x is the identity, codes get theirs."""
        x_hat = self._decode(self._encode(x))
        return x_hat + (x - x.detach())

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        code = self._encode(x_in)
        x_hat = sparse_decode(code, self.W_dec, self.b_dec)
        rec = mse(x_hat, x_out.detach())
        commit = mse(x_in, x_hat.detach())
        loss = rec + self.cfg.codebook_commitment * commit
        return LossOutput(loss, x_hat, code, {"mse": rec.detach(), "commitment": commit.detach()})

    @torch.no_grad()
    def init_from_data(self, x_in: Tensor, x_out: Tensor) -> None:
        super().init_from_data(x_in, x_out)
        self.b_dec.zero_()
        # codes start as (scaled) data points so that every code is near some activations
        y = x_out * self.scale_out
        g = torch.Generator().manual_seed(self.training_config.seed)
        self.W_dec.copy_(y[_nonzero_rows(y, self.d_dict, g)] / self.cfg.k)

    @torch.no_grad()
    def after_step(self, x_in: Tensor, x_out: Tensor, generator: torch.Generator) -> None:
        dead = self.dead_mask().nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        rows = _nonzero_rows(x_in, dead.numel(), generator)
        # a code's scale matters (codes are summed): start it at a typical activation's scale / k
        self.W_dec[dead] = x_in[rows].to(self.W_dec.dtype) / self.cfg.k
        self.tokens_since_fired[dead] = 0


# -- cosine codes outside a trained dictionary (codebooks inside a model, k-means init) -----------
def nearest_codes(x: Float[Tensor, "n d"], codes: Float[Tensor, "C d"], k: int,
                  forced: Int[Tensor, "n f"] | None = None) -> Int[Tensor, "n k"]:
    """Indices of the ``k`` codes of largest cosine with each row; ``forced`` ones first."""
    sims = _unit(x) @ _unit(codes).T
    if forced is not None:
        sims = sims.scatter(1, forced, float("inf"))
    return sims.topk(k, dim=1).indices


@torch.no_grad()
def spherical_kmeans(x: Float[Tensor, "n d"], n_clusters: int, iters: int = 10,
                     generator: torch.Generator | None = None) -> Float[Tensor, "C d"]:
    """Cluster means after Lloyd iterations with cosine assignment (empty clusters re-seeded)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    keep = x[x.norm(dim=-1) > 0]
    if len(keep) == 0:
        raise ValueError("k-means needs activations that are not all zero")
    cent = _kmeans_pp(keep, n_clusters, g)
    for _ in range(iters):
        assign = (_unit(keep) @ _unit(cent).T).argmax(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, keep)
        counts = torch.bincount(assign, minlength=n_clusters)
        empty = counts == 0
        cent = sums / counts.clamp_min(1)[:, None]
        cent[empty] = keep[torch.randint(0, len(keep), (int(empty.sum()),), generator=g)]
    return cent


def _kmeans_pp(x: Tensor, n: int, g: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with the cosine distance ``1 − cos``."""
    u = _unit(x)
    picks = [int(torch.randint(0, len(x), (1,), generator=g))]
    best = u @ u[picks[0]]
    for _ in range(n - 1):
        d = (1 - best).clamp_min(0).double()
        j = int(torch.multinomial(d, 1, generator=g)) if d.sum() > 0 else int(torch.randint(0, len(x), (1,), generator=g))
        picks.append(j)
        best = torch.maximum(best, u @ u[j])
    return x[picks].clone()
