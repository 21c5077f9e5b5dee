"""Interventions at sites: patch, zero/mean ablation, and splicing a function in.

All are context managers over `hooks_for`, so the hooks are gone when the block exits, also on
error. Inside the block, any forward pass of the model (``model(tokens)``, ``run_with_cache``,
a loss) sees the intervention; circuits and evaluation build on these. ``model`` is a `Model` or
a user's ``HookedTransformer``.

* ``patch(model, {site: value})``: the activation becomes ``value`` (broadcast over batch, or a
  ``[batch, pos, ...]`` tensor, e.g. from a corrupted run), optionally only at ``positions``.
* ``ablate(model, sites, mode)``: ``"zero"`` sets it to 0; ``"mean"`` to ``means[site]``
  (e.g. the dataset mean of that site, ``[...]`` broadcastable) or, if none is given, to the mean
  over batch and positions of the current input.
* ``splice(model, {site: fn})``: the activation becomes ``fn(activation)``, e.g. a dictionary's
  reconstruction ``x -> decode(encode(x))``.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.interp.capture import hooks_for, resolve_sites
from mechscope.interp.models import Model
from mechscope.interp.sites import Site

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

ABLATIONS = ("zero", "mean")


def _at_positions(fn: Callable[[Tensor], Tensor], positions: Sequence[int] | None) -> Callable[[Tensor], Tensor]:
    """Apply ``fn`` only at the given sequence positions (axis 1 for [batch, pos, ...] sites)."""
    if positions is None:
        return fn

    def apply(act: Tensor) -> Tensor:
        out = act.clone()
        idx = torch.as_tensor(list(positions), device=act.device)
        out[:, idx] = fn(act)[:, idx]
        return out

    return apply


@contextmanager
def splice(model: "ModelLike", site_fns: Mapping["Site | str", Callable[[Tensor], Tensor]],
           positions: Sequence[int] | None = None) -> Iterator[None]:
    """Replace each site's activation by ``fn(activation)`` for the duration of the block."""
    model = Model.wrap(model)
    fns = {model.site(s): _at_positions(fn, positions) for s, fn in site_fns.items()}
    with hooks_for(model, fns):
        yield


@contextmanager
def patch(model: "ModelLike", values: Mapping["Site | str", Tensor],
          positions: Sequence[int] | None = None) -> Iterator[None]:
    """Replace each site's activation by a given tensor (broadcast to the activation's shape)."""
    def const(v: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda act: v.to(act.device, act.dtype).expand_as(act)

    with splice(model, {s: const(v) for s, v in values.items()}, positions):
        yield


@contextmanager
def ablate(model: "ModelLike", sites: "Iterable[Site | str] | Site | str", mode: str = "zero",
           means: Mapping["Site | str", Tensor] | None = None,
           positions: Sequence[int] | None = None) -> Iterator[None]:
    """Zero- or mean-ablate sites (see module doc)."""
    model = Model.wrap(model)
    if mode not in ABLATIONS:
        raise ValueError(f"unknown ablation mode {mode!r}; valid: {', '.join(ABLATIONS)}")
    resolved = resolve_sites(model, sites)
    given = {model.site(s): v for s, v in (means or {}).items()}

    def fn_for(site: Site) -> Callable[[Tensor], Tensor]:
        if mode == "zero":
            return torch.zeros_like
        if site in given:
            m = given[site]
            return lambda act: m.to(act.device, act.dtype).expand_as(act)
        if site.kind in ("pattern", "scores"):
            return lambda act: act.mean(0, keepdim=True).expand_as(act)
        return lambda act: act.mean((0, 1), keepdim=True).expand_as(act)

    with splice(model, {s: fn_for(s) for s in resolved}, positions):
        yield
