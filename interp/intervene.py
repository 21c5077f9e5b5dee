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
* ``path_patch(model, tokens, sender, receivers)``: the sender's change (to a reference) reaches
  only the inputs of the receivers (heads' q / k / v inputs, MLP inputs, residual sites, the
  logits); ``route`` is the context manager underneath, adding a residual-stream change
  (`write_delta`) to chosen inputs only.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
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


# -- path patching ------------------------------------------------------------------------------
# Where in the forward pass a site writes into / reads from the residual stream, on one clock:
# 2L = resid_pre L (before attention L), 2L+1 = resid_mid L, 2L+2 = resid_post L.
_WRITES = {"resid_pre": 0, "z": 1, "result": 1, "attn_out": 1, "resid_mid": 1,
           "mlp_post": 2, "mlp_out": 2, "resid_post": 2}
_READS = {"q": 0, "k": 0, "v": 0, "resid_pre": 0, "mlp_in": 1, "resid_mid": 1, "resid_post": 2}
SENDER_KINDS = tuple(_WRITES)
RECEIVER_KINDS = tuple(_READS)


def _write_time(model: "Model", site: Site) -> int:
    if site.kind not in _WRITES:
        raise ValueError(f"sender {site}: a {site.kind!r} activation does not write to the residual "
                         f"stream by a linear map; sender kinds: {', '.join(SENDER_KINDS)} "
                         f"(L0.resid_pre is the embedding)")
    return 2 * site.layer + _WRITES[site.kind]


def _read_time(model: "Model", site: Site) -> int:
    if site.kind not in _READS:
        raise ValueError(f"receiver {site}: valid receivers are the inputs of heads (q / k / v, "
                         f"e.g. 'L1.k.H2'), MLPs ('L1.mlp_in'), residual sites "
                         f"({', '.join(k for k in _READS if k.startswith('resid'))}) and 'logits'")
    return 2 * site.layer + (0 if site.kind == "mlp_in" and model.parallel_blocks else _READS[site.kind])


def receiver_site(model: "Model", spec: "Site | str") -> Site:
    """A receiver spec as a site: ``'logits'`` is the last ``resid_post`` (read only by the
    unembedding); ``'L1.q.H2'`` means the input of head 2's queries (not the queries)."""
    if isinstance(spec, str) and spec.strip() == "logits":
        return Site(model.n_layers - 1, "resid_post")
    return model.site(spec)


def write_delta(model: "Model", site: Site, clean: Tensor, ref: Tensor) -> Float[Tensor, "b p d"]:
    """The change of the residual stream when ``site``'s activation goes from ``clean`` to ``ref``
    (``[b, p, ...]``, the site's own shape): through ``W_O`` for ``z``, ``W_out`` for
    ``mlp_post``, summed over heads for a whole-layer ``z`` / ``result``, else the identity."""
    _write_time(model, site)
    d = ref - clean
    if site.kind == "z":
        W_O = model.attn(site.layer).W_O  # [H, d_head, d_model]
        return d @ W_O[site.head] if site.head is not None else torch.einsum("bphe,hed->bpd", d, W_O)
    if site.kind == "result":
        return d if site.head is not None else d.sum(2)
    if site.kind == "mlp_post":
        return d @ model.W_out(site.layer)
    return d


@contextmanager
def route(model: "Model", delta: Float[Tensor, "b p d"], receivers: "Iterable[Site | str]",
          after: Site | None = None) -> Iterator[None]:
    """Add ``delta`` (a change of the residual stream, e.g. from `write_delta`) to the input of
    each receiver only, in every forward pass inside the block; nothing else sees it.

    Head receivers (``q`` / ``k`` / ``v``, one head or all) get it on their own copy of the
    residual stream before their LayerNorm (TransformerLens' split q/k/v inputs), so only that
    head's queries, keys or values change. ``after``: the sender, checked to be upstream of every
    receiver."""
    sites = [receiver_site(model, r) for r in receivers]
    if after is not None:
        t = _write_time(model, after)
        early = [str(r) for r in sites if _read_time(model, r) < t]
        if early:
            raise ValueError(f"receivers {early} read the residual stream before sender {after} "
                             f"writes to it: a path needs the receiver downstream of the sender")
    by_hook: dict[str, list[Site]] = {}
    for r in sites:
        _read_time(model, r)
        name = (f"blocks.{r.layer}.hook_{r.kind}_input" if r.kind in ("q", "k", "v")
                else f"blocks.{r.layer}.hook_mlp_in" if r.kind == "mlp_in" else r.hook_name)
        by_hook.setdefault(name, []).append(r)

    def hook_for(group: list[Site]) -> Callable:
        heads = group[0].kind in ("q", "k", "v")
        whole = any(r.head is None for r in group)
        index = sorted({r.head for r in group if r.head is not None})

        def hook(act: Tensor, hook=None) -> Tensor:  # noqa: ARG001 - TL passes the hook point
            d = delta.to(act.device, act.dtype)
            if not heads:
                return act + d
            if whole:
                return act + d[:, :, None]
            act = act.clone()
            act[:, :, index] += d[:, :, None]
            return act
        return hook

    fwd = [(name, hook_for(group)) for name, group in by_hook.items()]
    kinds = {"qkv_input" if r.kind in ("q", "k", "v") else r.kind for r in sites}
    with model.optional_hook_points(kinds), model.hooks(fwd):
        yield


def reference_value(act: Tensor, reference: "str | Tensor") -> Tensor:
    """The reference of an activation ``[b, p, ...]``: ``"zero"``, ``"mean"`` (over prompts and
    positions) or a given tensor (broadcast)."""
    if isinstance(reference, Tensor):
        return reference.to(act.device, act.dtype).expand_as(act)
    if reference == "zero":
        return torch.zeros_like(act)
    if reference == "mean":
        return act.mean((0, 1), keepdim=True).expand_as(act)
    raise ValueError(f"unknown reference {reference!r}; valid: 'zero', 'mean', a tensor of values, "
                     f"or ref_tokens=<patch prompts>")


def path_patch(model: "Model", tokens: Int[Tensor, "b p"], sender: "Site | str",
               receivers: "Iterable[Site | str]", reference: "str | Tensor" = "mean",
               ref_tokens: Int[Tensor, "b p"] | None = None,
               positions: Sequence[int] | None = None) -> Float[Tensor, "b p vocab"]:
    """Logits when ``sender``'s activation is replaced by its reference **only in the inputs of
    ``receivers``**, every other path held at its clean value (Wang et al. 2022, "Interpretability
    in the Wild", arXiv:2211.00593, §3; Goldowsky-Dill et al. 2023, "Localizing Model Behavior
    with Path Patching", arXiv:2304.05969).

    With ``s`` the sender's clean activation and ``s'`` its reference (``ref_tokens``' activation
    — a patch prompt's —, else ``reference``: ``"mean"``, ``"zero"`` or values), each receiver's
    input becomes ``x_r + W(s' - s)`` with ``W`` the sender's write into the residual stream
    (`write_delta`): the sender's change routed through the direct path only. For a head
    receiver it enters that head's ``q``, ``k`` or ``v`` input before its LayerNorm; the other
    heads of the layer, and every non-receiver, see the clean residual stream. The receivers'
    own outputs then propagate normally (a receiver downstream of another sees both changes), so
    with every reader downstream of the sender as a receiver this *is* ablating the sender, and
    with none it is the clean run. ``positions``: the sender changes only there.
    ``receivers``: ``'L1.q.H2'`` / ``'L1.k'`` (all heads) / ``'L1.v.H0'``, ``'L2.mlp_in'``,
    ``'L1.resid_mid'`` ..., ``'logits'`` (the direct path to the unembedding)."""
    from mechscope.interp.capture import capture
    from mechscope.interp.models import Model

    model = Model.wrap(model)
    site = model.site(sender)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    tokens = tokens.to(model.device)
    with torch.no_grad():
        clean = capture(model, tokens, [site])[site]
        if ref_tokens is not None:
            if ref_tokens.shape != tokens.shape:
                raise ValueError(f"ref_tokens have shape {list(ref_tokens.shape)}, tokens "
                                 f"{list(tokens.shape)}: patch prompts must match token for token")
            ref = capture(model, ref_tokens.to(model.device), [site])[site]
        else:
            ref = reference_value(clean, reference)
        delta = write_delta(model, site, clean, ref)
        if positions is not None:
            keep = torch.zeros(delta.shape[1], dtype=torch.bool, device=delta.device)
            keep[list(positions)] = True
            delta = delta * keep[None, :, None]
        with route(model, delta, receivers, after=site):
            return model(tokens)
