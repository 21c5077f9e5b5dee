"""A dictionary spliced into its model: cross-entropy loss recovered and KL divergence.

With the model's next-token loss ``L_clean``, the loss with the site replaced by the
dictionary's reconstruction ``L_spliced`` (for a transcoder: the output site replaced by
``decode(encode(x_in))``), and the loss with the site zero-ablated ``L_zero``,

    CE loss recovered = (L_zero − L_spliced) / (L_zero − L_clean)

(1 = as good as the model, 0 = as bad as deleting the site; Bricken et al. 2023, SAELens) and
``KL = E_t KL(p_clean(·|t) || p_spliced(·|t))`` averaged over predicted tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechscope.interp.capture import hooks_for
from mechscope.interp.intervene import ablate
from mechscope.interp.models import Model
from mechscope.sae.dictionary import Dictionary
from mechscope.sae.evaluate import ce_loss_recovered

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike


def reconstruct(dictionary: Dictionary, x: Tensor) -> Tensor:
    """``decode(encode(x))`` over the last axis of a ``[..., d_in]`` activation."""
    flat = x.reshape(-1, x.shape[-1])
    out = dictionary.decode(dictionary.encode(flat.to(torch.float32)))
    return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


def _spliced_logits(model: "Model", dictionary: Dictionary, site_in: Any, site_out: Any, tokens: Tensor) -> Tensor:
    site_in, site_out = model.site(site_in), model.site(site_out)
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


@torch.no_grad()
def spliced_metrics(model: "ModelLike", dictionary: Dictionary, site_in: Any, windows: Iterable[Tensor],
                    site_out: Any = None, batch_size: int = 8) -> dict[str, float]:
    """Clean / spliced / zero-ablated loss, CE loss recovered and KL over token ``windows``."""
    model = Model.wrap(model)
    site_out = site_in if site_out is None else site_out
    totals = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
    n_pred, batch = 0, []

    def flush() -> None:
        nonlocal n_pred
        tokens = torch.stack(batch).to(model.device)
        batch.clear()
        target = tokens[:, 1:]
        clean = model(tokens)[:, :-1].log_softmax(-1)
        spliced = _spliced_logits(model, dictionary, site_in, site_out, tokens)[:, :-1].log_softmax(-1)
        with ablate(model, site_out, "zero"):
            zero = model(tokens)[:, :-1].log_softmax(-1)
        for name, lp in (("clean", clean), ("spliced", spliced), ("zero", zero)):
            totals[name] -= lp.gather(-1, target[..., None]).sum().item()
        totals["kl"] += (clean.exp() * (clean - spliced)).sum().item()
        n_pred += target.numel()

    for w in windows:
        for row in (w if w.ndim == 2 else w[None]):
            batch.append(row)
            if len(batch) == batch_size:
                flush()
    if batch:
        flush()
    if n_pred == 0:
        raise ValueError("spliced_metrics needs at least one token window")
    out = {f"loss_{k}" if k != "kl" else "kl": v / n_pred for k, v in totals.items()}
    out["ce_loss_recovered"] = ce_loss_recovered(out["loss_clean"], out["loss_spliced"], out["loss_zero"])
    out["predicted_tokens"] = float(n_pred)
    return out
