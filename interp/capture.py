"""Reading activations at sites: `capture` and the `hooks_for` context manager.

`capture(model, tokens, sites)` runs the model only through the last block any site needs
(TransformerLens' ``stop_at_layer``), so reading ``L1.resid_post`` of a 12-layer model costs two
blocks, not twelve plus the unembedding. Hooks are installed through TransformerLens' ``hooks``
context manager, which removes them on exit, also when the forward pass raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import torch
from jaxtyping import Int
from torch import Tensor

from mechscope.interp.sites import Site

if TYPE_CHECKING:
    from mechscope.interp.models import Model


def resolve_sites(model: "Model", sites: "Iterable[Site | str] | Site | str") -> list[Site]:
    if isinstance(sites, (str, Site)):
        sites = [sites]
    out = [model.site(s) for s in sites]
    if not out:
        raise ValueError("no sites given")
    return out


@contextmanager
def site_flags(model: "Model", sites: Iterable[Site]) -> Iterator[None]:
    """Turn on the TransformerLens hook points that are off by default (mlp_in, result)."""
    tl, kinds = model.tl, {s.kind for s in sites}
    old = (tl.cfg.use_hook_mlp_in, tl.cfg.use_attn_result)
    try:
        if "mlp_in" in kinds and not old[0]:
            tl.set_use_hook_mlp_in(True)
        if "result" in kinds and not old[1]:
            tl.set_use_attn_result(True)
        yield
    finally:
        if tl.cfg.use_hook_mlp_in != old[0]:
            tl.set_use_hook_mlp_in(old[0])
        if tl.cfg.use_attn_result != old[1]:
            tl.set_use_attn_result(old[1])


@contextmanager
def hooks_for(model: "Model", site_fns: dict[Site, Callable[[Tensor], Tensor | None]]) -> Iterator[None]:
    """Install forward hooks ``fn(site_activation) -> new activation or None`` at sites.

    For head sites ``fn`` sees the head's slice; a returned tensor replaces only that slice.
    The hooks (and any hook-point flags turned on for them) are removed on exit, always.
    """
    fwd = [(site.hook_name, _hook(site, fn)) for site, fn in site_fns.items()]
    with site_flags(model, site_fns), model.tl.hooks(fwd_hooks=fwd):
        yield


def _hook(site: Site, fn: Callable[[Tensor], Tensor | None]) -> Callable:
    def hook(act: Tensor, hook=None) -> Tensor | None:  # noqa: ARG001 - TL passes the hook point
        out = fn(site.select(act))
        if out is None:
            return None
        if site.head is None:
            return out
        act = act.clone()
        act.select(site.head_axis, site.head).copy_(out)
        return act

    return hook


def stop_layer(sites: Iterable[Site]) -> int:
    """``stop_at_layer`` for TransformerLens: run blocks ``0..last`` only, never the unembedding."""
    return max(s.last_layer for s in sites) + 1


def capture(
    model: "Model",
    tokens: Int[Tensor, "batch pos"],
    sites: "Iterable[Site | str] | Site | str",
    grad: bool = False,
) -> dict[Site, Tensor]:
    """Activations at ``sites`` for ``tokens``, each ``[batch, pos, ...]`` (head sites sliced).

    The model runs only up to the last block a site needs; under ``torch.no_grad`` unless
    ``grad``.
    """
    sites = resolve_sites(model, sites)
    if tokens.ndim == 1:
        tokens = tokens[None]
    store: dict[Site, Tensor] = {}

    def saver(site: Site) -> Callable[[Tensor], None]:
        def save(act: Tensor) -> None:
            store[site] = act
        return save

    with torch.set_grad_enabled(grad), hooks_for(model, {s: saver(s) for s in sites}):
        model.tl(tokens.to(model.device), stop_at_layer=stop_layer(sites))
    return store
