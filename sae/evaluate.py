"""Evaluation of any `Dictionary` over a data source.

Over N rows with targets y (x itself for an SAE, the output site for a transcoder) and
reconstructions ŷ = decode(encode(x)):

    MSE = (1/N) Σ ||y − ŷ||²            FVU = Σ ||y − ŷ||² / Σ ||y − ȳ||²      EV = 1 − FVU
    L0  = mean number of non-zero code entries per row
    density_i = fraction of rows on which latent i is non-zero
    dead = density_i == 0,   dense = density_i > dense_threshold
    L1  = mean Σ_i |f_i|;   cossim = mean cos(y, ŷ);   l2_ratio = mean ||ŷ|| / ||y||
    relative reconstruction bias = argmin_γ E||ŷ/γ − y||² = E||ŷ||² / E<ŷ, y>   (< 1: shrinkage)

(the SAEBench / SAELens definitions; Karvonen et al. 2025; the bias as in Wright & Sharkey 2024,
SAEBench's ``relative_reconstruction_bias``). Sums are accumulated in float64, so a
stream of batches gives the same numbers as one big batch. ``Σ||y − ȳ||²`` is computed as
``Σ||y||² − N||ȳ||²``.

The language-model half (cross-entropy loss recovered with the dictionary spliced in) needs a
model; `ce_loss_recovered` is the formula ``(L_zero − L_spliced) / (L_zero − L_clean)`` for the
losses that caller measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechscope.sae.batches import split_batch
from mechscope.sae.adapters import as_dictionary
from mechscope.sae.dictionary import Dictionary, DictionaryLike


@dataclass(frozen=True)
class EvalResult:
    n_tokens: int
    l0: float
    mse: float
    fvu: float
    explained_variance: float
    dead_fraction: float
    dense_fraction: float
    density: Float[Tensor, "d_dict"]
    log10_density_hist: tuple[Tensor, Tensor]  # (counts [bins], edges [bins + 1]) over live latents
    l1: float = float("nan")
    cossim: float = float("nan")
    l2_ratio: float = float("nan")
    relative_reconstruction_bias: float = float("nan")

    SCALARS = ("n_tokens", "l0", "mse", "fvu", "explained_variance", "dead_fraction", "dense_fraction",
               "l1", "cossim", "l2_ratio", "relative_reconstruction_bias")

    def to_dict(self) -> dict[str, Any]:
        """Scalars only (JSON-able)."""
        return {k: getattr(self, k) for k in self.SCALARS}


class ReconstructionStats:
    """Running sums of `evaluate` for one dictionary: feed batches with `update`, read `result`."""

    def __init__(self, dictionary: Dictionary, dense_threshold: float | int = 0.1, bins: int = 50) -> None:
        self.dictionary, self.dense_threshold, self.bins = dictionary, dense_threshold, bins
        self.n, self.sq_err, self.sum_y, self.sum_y2, self.nnz = 0, 0.0, None, 0.0, 0.0
        self.fires = torch.zeros(dictionary.d_dict, dtype=torch.float64)
        # Σ|f|, Σ cos(y, ŷ), Σ ||ŷ||/||y||, Σ ||ŷ||², Σ <ŷ, y>
        self.shrink = torch.zeros(5, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"]) -> None:
        d = self.dictionary
        code = d.encode(x)
        y_hat = d.decode(code)
        y, y_hat = y.double(), y_hat.double()
        self.n += x.shape[0]
        self.sq_err += float((y - y_hat).pow(2).sum())
        self.sum_y = y.sum(0) if self.sum_y is None else self.sum_y + y.sum(0)
        self.sum_y2 += float(y.pow(2).sum())
        ny, nh = y.norm(dim=-1), y_hat.norm(dim=-1)
        dot = (y * y_hat).sum(-1)
        self.shrink += torch.stack([code.values.double().abs().sum().cpu(),
                                    (dot / (ny * nh).clamp_min(1e-12)).sum().cpu(),
                                    (nh / ny.clamp_min(1e-12)).sum().cpu(),
                                    nh.pow(2).sum().cpu(), dot.sum().cpu()])
        nz = code.values != 0
        self.nnz += float(nz.sum())
        dev = code.indices.device
        per_row = torch.zeros(x.shape[0], d.d_dict, dtype=torch.bool, device=dev)
        per_row[torch.arange(x.shape[0], device=dev)[:, None].expand_as(nz)[nz], code.indices[nz]] = True
        self.fires += per_row.sum(0).cpu()

    def result(self) -> EvalResult:
        n, bins = self.n, self.bins
        if n == 0:
            raise ValueError("the source yielded no batches")
        total = self.sum_y2 - float(self.sum_y.pow(2).sum()) / n
        fvu = self.sq_err / total if total > 0 else float("nan")
        density = (self.fires / n).float()
        live = density[density > 0]
        edges = torch.linspace(-float(torch.log10(torch.tensor(float(n)))), 0.0, bins + 1)
        counts = torch.histc(live.log10(), bins, float(edges[0]), float(edges[-1])) if live.numel() else torch.zeros(bins)
        l1, cos, ratio, hh, hy = self.shrink.tolist()
        return EvalResult(n, self.nnz / n, self.sq_err / n, fvu, 1 - fvu, float((density == 0).float().mean()),
                          float((density > self.dense_threshold).float().mean()), density, (counts, edges),
                          l1 / n, cos / n, ratio / n, hh / hy if hy else float("nan"))


@torch.no_grad()
def evaluate(dictionary: DictionaryLike, source: Iterable[Any], n_batches: int | None = None, *,
             site_in: str = "", site_out: str = "", transcoder: bool | None = None,
             dense_threshold: float | int = 0.1, bins: int = 50) -> EvalResult:
    """Metrics of ``dictionary`` over up to ``n_batches`` batches of ``source``."""
    if n_batches is not None and n_batches <= 0:
        raise ValueError(f"n_batches must be > 0 or None, got {n_batches}")
    dictionary = as_dictionary(dictionary)
    cfg = getattr(dictionary, "cfg", dictionary)
    site_in = site_in or getattr(cfg, "site_in", "")
    site_out = site_out or getattr(cfg, "site_out", "")
    transcoder = getattr(cfg, "transcoder", False) if transcoder is None else transcoder
    stats = ReconstructionStats(dictionary, dense_threshold, bins)
    for i, batch in enumerate(source):
        if n_batches is not None and i >= n_batches:
            break
        stats.update(*split_batch(batch, site_in, site_out, transcoder))
    return stats.result()


def ce_loss_recovered(clean: float, spliced: float, zero_ablated: float) -> float:
    """``(L_zero − L_spliced) / (L_zero − L_clean)``: 1 = as good as the model, 0 = as bad as ablating."""
    if zero_ablated == clean:
        raise ValueError("zero-ablated and clean losses are equal: the site does not matter")
    return (zero_ablated - spliced) / (zero_ablated - clean)
