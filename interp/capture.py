"""Reading activations at sites: `capture` and the `hooks_for` context manager.

`capture(model, tokens, sites)` stops the forward pass as soon as the last requested site has
been computed (a hook raises a private exception once every site is stored), so reading
``L1.resid_post`` of a 12-layer model costs two blocks, not twelve plus the unembedding, and
``L1.resid_pre`` costs one block. Hooks are installed through `Model.hooks`, which removes
them on exit, also when the forward pass raises. Every function takes a `Model` or a user's
``HookedTransformer``.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from mechscope.interp.models import Model
from mechscope.interp.sites import Site

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike


def resolve_sites(model: "ModelLike", sites: "Iterable[Site | str] | Site | str") -> list[Site]:
    model = Model.wrap(model)
    if isinstance(sites, (str, Site)):
        sites = [sites]
    out = [model.site(s) for s in sites]
    if not out:
        raise ValueError("no sites given")
    return out


@contextmanager
def hooks_for(model: "ModelLike",
              site_fns: dict[Site, Callable[[Tensor], Tensor | None]]) -> Iterator[None]:
    """Install forward hooks ``fn(site_activation) -> new activation or None`` at sites.

    For head sites ``fn`` sees the head's slice; a returned tensor replaces only that slice.
    The hooks (and any hook-point flags turned on for them) are removed on exit, always.
    """
    model = Model.wrap(model)
    fwd = [(site.hook_name, _hook(site, fn)) for site, fn in site_fns.items()]
    with model.optional_hook_points(s.kind for s in site_fns), model.hooks(fwd):
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
    """TransformerLens ``stop_at_layer`` that still computes every site (hooks of layer L live in
    block L), for callers that need the residual stream output rather than `capture`."""
    return max(s.layer for s in sites) + 1


class _Done(Exception):
    """Raised by the last capture hook to end the forward pass early."""


def capture(
    model: "ModelLike",
    tokens: Int[Tensor, "batch pos"],
    sites: "Iterable[Site | str] | Site | str",
    grad: bool = False,
) -> dict[Site, Tensor]:
    """Activations at ``sites`` for ``tokens``, each ``[batch, pos, ...]`` (head sites sliced).

    The forward pass stops once every site is computed; under ``torch.no_grad`` unless ``grad``.
    """
    model = Model.wrap(model)
    sites = resolve_sites(model, sites)
    if tokens.ndim == 1:
        tokens = tokens[None]
    store: dict[Site, Tensor] = {}
    wanted = set(sites)

    def saver(site: Site) -> Callable[[Tensor], None]:
        def save(act: Tensor) -> None:
            store[site] = act
            if len(store) == len(wanted):
                raise _Done
        return save

    try:
        with torch.set_grad_enabled(grad), hooks_for(model, {s: saver(s) for s in wanted}):
            model(tokens.to(model.device))
    except _Done:
        pass
    missing = wanted - set(store)
    if missing:
        raise RuntimeError(f"the forward pass never computed {', '.join(map(str, sorted(missing)))}")
    return store


def site_shapes(model: "ModelLike", sites: "Iterable[Site | str] | Site | str",
                n_ctx: int = 2) -> dict[Site, tuple[int, ...]]:
    """The shape of each site's captured activation for one window of ``n_ctx`` tokens, without
    the batch axis (``(n_ctx, ...)``; ``(heads, n_ctx, n_ctx)`` for all-head patterns): the one
    probe of site widths. One early-stopped forward pass over a dummy window, because the hooked
    shapes (GQA keys, head slices, gated MLPs, patterns) are TransformerLens' to decide."""
    if not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
    acts = capture(model, torch.zeros(1, n_ctx, dtype=torch.long), sites)
    return {s: tuple(a.shape[1:]) for s, a in acts.items()}
