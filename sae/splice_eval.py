"""Dictionaries spliced into their model: cross-entropy loss recovered, KL divergence, and the
reconstruction metrics of `mechscope.sae.evaluate` on the same held-out windows.

With the model's next-token loss ``L_clean``, the loss with the site replaced by the
dictionary's reconstruction ``L_spliced`` (for a transcoder: the output site replaced by
``decode(encode(x_in))``), and the loss with the site zero-ablated ``L_zero``,

    CE loss recovered = (L_zero − L_spliced) / (L_zero − L_clean)

(1 = as good as the model, 0 = as bad as deleting the site; Bricken et al. 2023, SAELens) and
``KL = E_t KL(p_clean(·|t) || p_spliced(·|t))`` averaged over predicted tokens.

A sweep's dictionaries share their sites, so `evaluate_heldout` evaluates all R of them in one
pass over the windows: per batch of windows, one clean forward (which also captures the
activations the reconstruction metrics read), one zero-ablated forward, and one spliced forward
per dictionary — ``2 + R`` forwards per batch instead of ``3R`` (plus R activation passes), and
the held-out text is tokenised once, by the caller. Memory holds one batch's log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechscope.interp.capture import hooks_for
from mechscope.interp.intervene import ablate
from mechscope.interp.models import Model
from mechscope.interp.tokens import window_batches
from mechscope.sae.adapters import as_dictionary
from mechscope.sae.dictionary import Dictionary, DictionaryLike
from mechscope.sae.evaluate import EvalResult, ReconstructionStats, ce_loss_recovered

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike


class SpliceResult(NamedTuple):
    """Mean next-token losses (nats) clean / spliced / zero-ablated, KL(clean || spliced), CE loss
    recovered, and KL(clean || zero-ablated) (the denominator of SAEBench's KL score)."""

    loss_clean: float
    loss_spliced: float
    loss_zero: float
    kl: float
    ce_loss_recovered: float
    predicted_tokens: float
    kl_zero: float = float("nan")

    @property
    def kl_div_score(self) -> float:
        """``(KL_zero − KL_spliced) / KL_zero`` (SAEBench): 1 = the model's distribution kept."""
        return (self.kl_zero - self.kl) / self.kl_zero if self.kl_zero > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        return self._asdict()


@dataclass(frozen=True)
class HeldoutEval:
    """A dictionary on held-out text: reconstruction (`EvalResult`) and splicing (`SpliceResult`)."""

    reconstruction: EvalResult
    spliced: SpliceResult

    def row(self) -> dict[str, Any]:
        """The ``eval_*`` columns of a results table."""
        both = {**self.reconstruction.to_dict(), **self.spliced.to_dict()}
        return {f"eval_{k}": v for k, v in both.items()}


def dictionary_dtype(dictionary: Dictionary) -> torch.dtype:
    """The dtype a dictionary's encoder takes: its decoder's (float32 for foreign objects)."""
    w = getattr(dictionary, "W_dec", None)
    return w.dtype if isinstance(w, Tensor) else torch.float32


def reconstruct(dictionary: Dictionary, x: Tensor) -> Tensor:
    """``decode(encode(x))`` over the last axis of a ``[..., d_in]`` activation."""
    flat = x.reshape(-1, x.shape[-1])
    out = dictionary.decode(dictionary.encode(flat.to(dictionary_dtype(dictionary))))
    return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


def _spliced_logits(model: "Model", dictionary: Dictionary, site_in: Any, site_out: Any, tokens: Tensor) -> Tensor:
    if site_in == site_out:
        with hooks_for(model, {site_in: lambda x: reconstruct(dictionary, x)}):
            return model(tokens)
    seen: dict[str, Tensor] = {}

    def save(x: Tensor) -> None:
        seen["x"] = x

    def replace(x: Tensor) -> Tensor:
        if "x" not in seen:
            raise ValueError(f"transcoder input site {site_in} runs after its output site {site_out}")
        return reconstruct(dictionary, seen["x"]).expand_as(x)

    with hooks_for(model, {site_in: save, site_out: replace}):
        return model(tokens)


def _clean_forward(model: "Model", tokens: Tensor, sites: Sequence[Any]) -> tuple[Tensor, dict[Any, Tensor]]:
    """Log-probabilities of the clean model, and the activations at ``sites`` of the same pass."""
    acts: dict[Any, Tensor] = {}

    def saver(site: Any) -> Callable[[Tensor], None]:
        def save(x: Tensor) -> None:
            acts[site] = x
        return save

    with hooks_for(model, {s: saver(s) for s in sites}):
        logits = model(tokens)
    return logits[:, :-1].float().log_softmax(-1), acts


@torch.no_grad()
def evaluate_heldout(model: "ModelLike", dictionaries: Sequence[DictionaryLike], site_in: Any,
                     windows: Iterable[Int[Tensor, "... n_ctx"]], site_out: Any = None, batch_size: int = 8,
                     keep_mask: Callable[[Tensor], Bool[Tensor, "b n_ctx"]] | None = None) -> list[HeldoutEval]:
    """Every dictionary (all at ``site_in`` -> ``site_out``) on the same token ``windows``.

    Reconstruction metrics read the rows of the windows' tokens where ``keep_mask`` is true
    (e.g. a token stream's ``keep_mask``, which drops BOS and separators; default: all).
    """
    from mechscope.interp.stream import flatten_site

    model = Model.wrap(model)
    dictionaries = [as_dictionary(d) for d in dictionaries]
    site_in = model.site(site_in)
    site_out = site_in if site_out is None else model.site(site_out)
    if not dictionaries:
        raise ValueError("evaluate_heldout needs at least one dictionary")
    stats = [ReconstructionStats(d) for d in dictionaries]
    totals = torch.zeros(len(dictionaries), 2, dtype=torch.float64)  # spliced loss, KL
    clean_loss = zero_loss = kl_zero = 0.0
    n_pred = 0
    for tokens in window_batches(windows, batch_size):
        tokens = tokens.to(model.device)
        target = tokens[:, 1:, None]
        clean, acts = _clean_forward(model, tokens, sorted({site_in, site_out}))
        with ablate(model, site_out, "zero"):
            zero = model(tokens)[:, :-1].float().log_softmax(-1)
        clean_loss -= clean.gather(-1, target).sum().item()
        zero_loss -= zero.gather(-1, target).sum().item()
        kl_zero += (clean.exp() * (clean - zero)).sum().item()
        n_pred += target.numel()
        keep = (keep_mask(tokens) if keep_mask is not None else torch.ones_like(tokens, dtype=torch.bool)).reshape(-1)
        x_in, x_out = (flatten_site(s, acts[s])[keep].float() for s in (site_in, site_out))
        for i, d in enumerate(dictionaries):
            stats[i].update(x_in.to(dictionary_dtype(d)), x_out)
            spliced = _spliced_logits(model, d, site_in, site_out, tokens)[:, :-1].float().log_softmax(-1)
            totals[i, 0] -= spliced.gather(-1, target).sum().item()
            totals[i, 1] += (clean.exp() * (clean - spliced)).sum().item()
    if n_pred == 0:
        raise ValueError("evaluate_heldout needs at least one token window")
    out = []
    for s, (spliced_loss, kl) in zip(stats, totals.tolist()):
        lc, ls, lz = clean_loss / n_pred, spliced_loss / n_pred, zero_loss / n_pred
        splice = SpliceResult(lc, ls, lz, kl / n_pred, ce_loss_recovered(lc, ls, lz), float(n_pred),
                              kl_zero / n_pred)
        out.append(HeldoutEval(s.result(), splice))
    return out


def spliced_metrics(model: "ModelLike", dictionary: Dictionary, site_in: Any, windows: Iterable[Tensor],
                    site_out: Any = None, batch_size: int = 8) -> SpliceResult:
    """Clean / spliced / zero-ablated loss, CE loss recovered and KL of one dictionary."""
    return evaluate_heldout(model, [dictionary], site_in, windows, site_out, batch_size)[0].spliced
