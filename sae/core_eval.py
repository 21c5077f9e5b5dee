"""Core evaluation of one dictionary on its model: SAEBench's "core" metrics.

Two passes (Karvonen et al. 2025, SAEBench; definitions in `mechscope.sae.evaluate` and
`mechscope.sae.splice_eval`):

- **spliced**, on a few held-out windows: the model's next-token loss and distribution with the
  dictionary's reconstruction in place of its (output) site, against the clean and the
  zero-ablated model: CE loss recovered and ``kl_div_score = (KL_zero − KL_sae) / KL_zero``.
  For a transcoder this is its downstream effect (the output site replaced by
  ``decode(encode(x_in))``).
- **density**, over many tokens (default 2^20): activation frequency of every latent, hence the
  dead fraction (never fired) and dense fraction (fires on > 10% of tokens) — a latent cannot be
  called dead from one batch of a few thousand tokens — and L0, FVU, shrinkage on the same rows.

`CoreEval.saebench()` nests the numbers under SAEBench's field names where the metric is the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechscope.sae.dictionary import Dictionary
from mechscope.sae.evaluate import EvalResult, ReconstructionStats
from mechscope.sae.splice_eval import SpliceResult, evaluate_heldout

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike


@dataclass(frozen=True)
class CoreEval:
    """Splicing (`SpliceResult`, held-out windows) and reconstruction / density over many tokens."""

    spliced: SpliceResult
    density: EvalResult

    def saebench(self) -> dict[str, dict[str, float]]:
        s, d = self.spliced, self.density
        freq = d.density
        return {
            "model_behavior_preservation": {"kl_div_score": s.kl_div_score, "kl_div_with_ablation": s.kl_zero,
                                            "kl_div_with_sae": s.kl},
            "model_performance_preservation": {"ce_loss_score": s.ce_loss_recovered,
                                               "ce_loss_with_ablation": s.loss_zero,
                                               "ce_loss_with_sae": s.loss_spliced,
                                               "ce_loss_without_sae": s.loss_clean},
            "reconstruction_quality": {"explained_variance": d.explained_variance, "mse": d.mse,
                                       "cossim": d.cossim, "fvu": d.fvu},
            "shrinkage": {"l2_ratio": d.l2_ratio, "relative_reconstruction_bias": d.relative_reconstruction_bias},
            "sparsity": {"l0": d.l0, "l1": d.l1},
            "misc_metrics": {"freq_over_1_percent": float((freq > 0.01).float().mean()),
                             "freq_over_10_percent": float((freq > 0.1).float().mean()),
                             "dead_fraction": d.dead_fraction, "dense_fraction": d.dense_fraction,
                             "density_tokens": float(d.n_tokens), "spliced_tokens": s.predicted_tokens},
        }


@torch.no_grad()
def density_over_tokens(model: "ModelLike", dictionary: Dictionary, site_in: Any, windows: Iterable[Tensor],
                        n_tokens: int, site_out: Any = None, batch_size: int = 16,
                        keep_mask: Any = None, dense_threshold: float = 0.1) -> EvalResult:
    """Reconstruction metrics and latent densities over the first ``n_tokens`` kept rows of
    ``windows`` (rows where ``keep_mask(tokens)`` is true; default all)."""
    from mechscope.interp.capture import capture
    from mechscope.interp.models import Model
    from mechscope.interp.stream import flatten_site
    from mechscope.interp.tokens import window_batches
    from mechscope.sae.adapters import as_dictionary

    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be > 0, got {n_tokens}")
    model = Model.wrap(model)
    site_in = model.site(site_in)
    site_out = site_in if site_out is None else model.site(site_out)
    stats = ReconstructionStats(as_dictionary(dictionary), dense_threshold)
    seen = 0
    for tokens in window_batches(windows, batch_size):
        acts = capture(model, tokens, sorted({site_in, site_out}))
        keep = (keep_mask(tokens) if keep_mask is not None else torch.ones_like(tokens, dtype=torch.bool)).reshape(-1)
        x_in, x_out = (flatten_site(s, acts[s])[keep.to(acts[s].device)].float() for s in (site_in, site_out))
        x_in, x_out = x_in[: n_tokens - seen], x_out[: n_tokens - seen]
        stats.update(x_in, x_out)
        seen += x_in.shape[0]
        if seen >= n_tokens:
            break
    return stats.result()


def core_eval(model: "ModelLike", dictionary: Dictionary, site_in: Any, heldout: Iterable[Tensor],
              density_windows: Iterable[Tensor], n_tokens: int = 2**20, splice_windows: int = 64,
              site_out: Any = None, batch_size: int = 16, keep_mask: Any = None) -> CoreEval:
    """`CoreEval` of ``dictionary``: splicing on ``splice_windows`` windows of ``heldout``,
    densities and reconstruction over ``n_tokens`` rows of ``density_windows``."""
    windows = list(itertools.islice(heldout, splice_windows))
    spliced = evaluate_heldout(model, [dictionary], site_in, windows, site_out=site_out,
                               batch_size=batch_size, keep_mask=keep_mask)[0].spliced
    density = density_over_tokens(model, dictionary, site_in, density_windows, n_tokens, site_out,
                                  batch_size, keep_mask)
    return CoreEval(spliced, density)
