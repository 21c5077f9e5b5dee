"""Attribution primitives over sites with dictionaries spliced in: metrics, the traced problem
(`Setup`), reference values for an ablation, direct-path runs (`run_direct`) and node scores.

For a metric ``m`` of the logits and nodes ``a`` (dictionary features, error terms, heads or
whole components at chosen sites, see `mechscope.circuits.splice`):

* gradient x activation: ``s(a) = dm/da · a`` (Simonyan et al. 2013; Shrikumar et al. 2016);
* attribution patching: ``s(a) = dm/da|_clean · (a_ref - a_clean)``, the first-order estimate of
  the effect of setting ``a`` to its reference value (Nanda 2023; Syed et al. 2023,
  arXiv:2310.10348; Marks et al. 2024, eq. 3);
* integrated gradients (Sundararajan et al. 2017): ``s(a) = (a_ref - a_clean) · (1/N) sum_k
  dm/da(x_S(alpha_k))`` with all nodes of a site ``S`` moved together along
  ``x_S(alpha) = x_clean + alpha (x_ref - x_clean)`` at midpoints ``alpha_k = (k + 1/2)/N`` while
  the other sites are computed normally (Marks et al. 2024, eq. 4). The N steps run as one
  batch of ``N x batch`` rows. IG satisfies completeness: summed over the nodes of a site it
  approaches ``m(x_S = x_ref) - m(clean)`` as N grows.

Failure mode of the first-order scores (gradient x activation, AtP): where the metric saturates
at the clean run its gradient vanishes, and every node scores ~0 however large its real effect.
Known truth (`mechscope.circuits.planted`, ``planted-saturated``): with ``p(a) ~ 1`` the AtP
scores are < 1e-4 and no node reaches the default threshold, while patching moves ``log p(a)``
by ~-20; integrated gradients recovers the circuit exactly (tests/circuits/test_known_truth.py).

The reference ``a_ref`` is explicit and recorded: ``"patch"`` (contrastive pairs: the nodes'
values on the corrupted prompts), ``"zero"``, ``"mean"`` (mean over the prompts and positions),
or ``"resample"`` (the values of another prompt of the batch, rolled by one).

Gradients are those of the unmodified model: splicing ``x = merge(split(x))`` changes no value and
no gradient, so every site's gradient is ``dm/dx`` and node gradients are its adjoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechscope.circuits.metrics import (Metric, logit_diff, logprob,  # noqa: F401 - re-exported
                                        next_token_logprob)
from mechscope.circuits.metrics import named as _named  # noqa: F401
from mechscope.circuits.splice import Parts, SiteNodes, site_rank
from mechscope.interp.capture import hooks_for, stop_layer
from mechscope.interp.models import Model
from mechscope.interp.sites import Site
from mechscope.sae.adapters import as_dictionary

ABLATIONS = ("patch", "zero", "mean", "resample")
METHODS = ("grad_x_act", "atp", "ig")


# -- the traced problem -------------------------------------------------------------------------
@dataclass(eq=False)
class Setup:
    """Model, sites (each with a dictionary or None), metric, prompts and the reference."""

    model: Model
    nodes: dict[Site, SiteNodes]
    metric: Metric
    clean: Int[Tensor, "b p"]
    ablation: str = "mean"
    patch: Tensor | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, model: Any, sites: "Iterable[Site | str] | Mapping[Site | str, Any]",
              metric: Metric, clean: Tensor, ablation: str | None = None,
              patch: Tensor | None = None) -> "Setup":
        """Validate everything once. ``sites``: site names, or ``{site: dictionary or None}``.
        ``ablation`` defaults to ``"patch"`` when corrupted prompts ``patch`` are given, else
        ``"mean"``. ``model``: a `Model` or a ``HookedTransformer``."""
        from mechscope.interp.capture import site_shapes

        model = Model.wrap(model)
        ablation = ablation or ("patch" if patch is not None else "mean")
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
        if (ablation == "patch") != (patch is not None):
            raise ValueError("ablation 'patch' needs corrupted prompts `patch` (and only it uses them)")
        clean = clean[None] if clean.ndim == 1 else clean
        if patch is not None and patch.shape != clean.shape:
            raise ValueError(f"patch prompts have shape {list(patch.shape)}, clean {list(clean.shape)}; "
                             f"contrastive pairs must match token for token in length")
        if ablation == "resample" and clean.shape[0] < 2:
            raise ValueError("ablation 'resample' needs at least 2 prompts")
        mapping = dict(sites) if isinstance(sites, Mapping) else {s: None for s in sites}
        if not mapping:
            raise ValueError("no sites given")
        parsed = {model.site(s): None if d is None else as_dictionary(d) for s, d in mapping.items()}
        shapes = site_shapes(model, list(parsed))
        nodes = {s: SiteNodes.make(s, d, shapes[s][1:])
                 for s, d in sorted(parsed.items(), key=lambda kv: site_rank(kv[0]))}
        return cls(model, nodes, metric, clean.to(model.device), ablation,
                   None if patch is None else patch.to(model.device))

    @property
    def sites(self) -> list[Site]:
        return list(self.nodes)

    def select(self, rows: "slice | Tensor") -> "Setup":
        """The same problem for a subset of the prompts, with the reference of the whole batch
        (the mean over every prompt; the previous prompt of the whole batch for ``resample``), so
        results over chunks add up to those of the batch. Needs a metric with ``select`` (the
        metrics of this module have it)."""
        if not hasattr(self.metric, "select"):
            raise ValueError(f"metric {getattr(self.metric, '__name__', self.metric)!r} has no "
                             f"`select(rows)`: chunking over prompts needs a metric that can be "
                             f"restricted to a subset of prompts (see circuits.metrics; wrap a function "
                             f"with metrics.custom)")
        rows = torch.arange(self.clean.shape[0])[rows]
        metric, clean = self.metric.select(rows), self.clean[rows]
        if self.ablation == "resample":  # prompt i's reference is prompt i-1's clean run
            sub = Setup(self.model, self.nodes, metric, clean, "patch", self.clean.roll(1, 0)[rows])
        else:
            sub = Setup(self.model, self.nodes, metric, clean, self.ablation,
                        None if self.patch is None else self.patch[rows])
        if self.ablation == "mean":
            sub._cache["mean"] = mean_parts(self)
        return sub

    def chunks(self, size: int | None) -> "Iterator[tuple[Setup, float]]":
        """``(sub-setup, its share of the prompts)`` for chunks of at most ``size`` prompts, made
        one at a time (a chunk's cached runs are freed once the caller moves on); the setup itself
        when ``size`` is None or covers the batch."""
        b = self.clean.shape[0]
        if size is not None and size < 1:
            raise ValueError(f"chunk size must be >= 1 prompt, got {size}")
        if size is None or size >= b:
            yield self, 1.0
            return
        for i in range(0, b, size):
            sub = self.select(slice(i, min(i + size, b)))
            yield sub, (min(i + size, b) - i) / b
            # the caller has moved on: count the chunk's passes on the parent (benchmarks read
            # them) and drop its cached runs before the next chunk is made, so that at most one
            # chunk's activations are alive at a time
            for k in ("passes", "backward"):
                self._cache[k] = self._cache.get(k, 0) + sub._cache.get(k, 0)
            sub._cache.clear()
            del sub

    def params(self) -> dict[str, Any]:
        """What a graph records about how it was traced."""
        dicts = {str(s): (None if n.dictionary is None else
                          f"{type(n.dictionary).__name__}(d_dict={n.dictionary.d_dict})")
                 for s, n in self.nodes.items()}
        return {"sites": [str(s) for s in self.nodes], "dictionaries": dicts,
                "ablation": self.ablation, "metric": getattr(self.metric, "__name__", "custom"),
                "n_prompts": int(self.clean.shape[0]), "seq_len": int(self.clean.shape[1])}


# -- forward passes -----------------------------------------------------------------------------
@contextmanager
def frozen(model: Model) -> Iterator[None]:
    """The model's parameters without ``requires_grad`` for the block (restored after).
    Attribution differentiates activations only: with trainable parameters autograd would also
    keep every layer's inputs for weight gradients, and the whole graph upstream of an
    interpolated site, roughly doubling a pass's memory."""
    params = [p for p in model.module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def run(setup: Setup, tokens: Tensor, fns: Mapping[Site, Callable[[Tensor], Tensor]],
        stop_at_layer: int | None = None) -> Tensor:
    """One forward with ``fns[site](act) -> new act`` at sites (parameters `frozen`); returns
    the logits (or the last residual stream when stopping early)."""
    setup._cache["passes"] = setup._cache.get("passes", 0) + 1
    with hooks_for(setup.model, dict(fns)), frozen(setup.model):
        return setup.model(tokens, stop_at_layer=stop_at_layer)


def run_direct(setup: Setup, up: Site, up_fn: Callable[[Tensor], Tensor], down: Site | None,
               repeat: int = 1) -> tuple[Tensor, Tensor | None]:
    """One forward of the clean prompts stacked ``repeat`` times with ``up_fn`` at ``up`` and every
    site strictly between ``up`` and ``down`` held at its clean value, so that ``up`` reaches
    ``down`` by direct paths only. Returns the output of `run` (stopped at ``down``'s layer) and
    ``down``'s activation; ``down=None`` is the metric: full logits and None."""
    clean = clean_run(setup)["acts"]
    fns: dict[Site, Callable[[Tensor], Tensor]] = {up: up_fn}
    for s in setup.sites:
        if site_rank(up) < site_rank(s) and (down is None or site_rank(s) < site_rank(down)):
            fns[s] = (lambda v: (lambda a: v))(clean[s].repeat(repeat, *[1] * (clean[s].ndim - 1)))
    store: dict[str, Tensor] = {}
    if down is not None:
        fns[down] = lambda a: store.setdefault("act", a)
    out = run(setup, setup.clean.repeat(repeat, 1), fns,
              stop_at_layer=None if down is None else stop_layer([down]))
    return out, store.get("act")


def metric_of(setup: Setup, logits: Tensor) -> Tensor:
    """The metric per row of logits from ``K`` stacked copies of the prompts (metrics are
    defined per prompt, e.g. with a target token per prompt)."""
    b = setup.clean.shape[0]
    return torch.cat([setup.metric(chunk) for chunk in logits.split(b)])


def clean_metric(setup: Setup, chunk: int | None = None) -> float:
    """The clean metric, mean over prompts: from the cached clean run if there is one, else by
    plain forwards of ``chunk`` prompts (nothing kept)."""
    if "clean" in setup._cache:
        return float(setup._cache["clean"]["metric"].mean())
    total = 0.0
    with torch.no_grad():
        for sub, share in setup.chunks(chunk):
            total += share * float(sub.metric(run(sub, sub.clean, {})).mean())
    return total


def clean_run(setup: Setup) -> dict[str, Any]:
    """Clean activations, their metric gradients and the clean metric (cached on the setup)."""
    if "clean" in setup._cache:
        return setup._cache["clean"]
    acts: dict[Site, Tensor] = {}

    def keep(site: Site) -> Callable[[Tensor], Tensor]:
        def fn(a: Tensor) -> Tensor:
            a = a.clone() if a.requires_grad else a.detach().clone().requires_grad_()
            acts[site] = a
            return a
        return fn

    with torch.enable_grad():
        m = setup.metric(run(setup, setup.clean, {s: keep(s) for s in setup.sites}))
        grads = torch.autograd.grad(m.sum(), [acts[s] for s in setup.sites], allow_unused=True)
        setup._cache["backward"] = setup._cache.get("backward", 0) + 1
    out = {"acts": {s: a.detach() for s, a in acts.items()},
           "grads": {s: (torch.zeros_like(acts[s]) if g is None else g.detach())
                     for s, g in zip(setup.sites, grads)},
           "metric": m.detach()}
    setup._cache["clean"] = out
    return out


def split_all(setup: Setup, acts: Mapping[Site, Tensor]) -> dict[Site, Parts]:
    with torch.no_grad():
        return {s: tuple(p.detach() for p in setup.nodes[s].split(acts[s])) for s in setup.sites}


def reference(setup: Setup) -> dict[Site, Parts]:
    """Reference node values per site, by the setup's ablation (cached)."""
    if "ref" in setup._cache:
        return setup._cache["ref"]
    clean = split_all(setup, clean_run(setup)["acts"])
    if setup.ablation == "patch":
        store: dict[Site, Tensor] = {}

        def save(site: Site) -> Callable[[Tensor], Tensor]:
            def fn(a: Tensor) -> Tensor:
                store[site] = a.detach()
                return a
            return fn

        with torch.no_grad():
            run(setup, setup.patch, {s: save(s) for s in setup.sites})
        ref = split_all(setup, store)
    elif setup.ablation == "zero":
        ref = {s: tuple(torch.zeros_like(p) for p in parts) for s, parts in clean.items()}
    elif setup.ablation == "mean":
        means = setup._cache.get("mean") or {s: tuple(p.mean((0, 1), keepdim=True) for p in parts)
                                             for s, parts in clean.items()}
        ref = {s: tuple(m.expand_as(p) for m, p in zip(means[s], parts)) for s, parts in clean.items()}
    else:  # resample: prompt i takes the values of prompt i - 1
        ref = {s: tuple(p.roll(1, dims=0) for p in parts) for s, parts in clean.items()}
    setup._cache["ref"] = ref
    return ref


def as_groups(setup: "Setup | Sequence[Setup]") -> list[tuple[Setup, float]]:
    """One traced problem over prompts of different lengths, given as one setup per length:
    ``(setup, its share of all prompts)``. The setups must trace the same sites with the same
    dictionaries and ablation; a ``mean`` reference is pooled over every prompt and position of
    all groups (``resample`` takes the previous prompt within a group)."""
    setups = [setup] if isinstance(setup, Setup) else list(setup)
    if not setups:
        raise ValueError("no setups given")
    first = setups[0]
    for s in setups[1:]:
        if s.sites != first.sites or s.ablation != first.ablation or any(
                s.nodes[k].dictionary is not first.nodes[k].dictionary for k in first.sites):
            raise ValueError("setups of one trace must share sites, dictionaries and ablation; got "
                             f"{[str(x) for x in first.sites]} ({first.ablation}) and "
                             f"{[str(x) for x in s.sites]} ({s.ablation})")
    total = sum(s.clean.shape[0] for s in setups)
    if first.ablation == "mean" and len(setups) > 1 and "pooled" not in first._cache:
        tokens = [s.clean.numel() for s in setups]
        means = [mean_parts(s) for s in setups]
        pooled = {site: tuple(sum(m[site][i] * n for m, n in zip(means, tokens)) / sum(tokens)
                              for i in range(len(means[0][site]))) for site in first.sites}
        for s in setups:
            s._cache.pop("ref", None)
            s._cache.update(mean=pooled, pooled=True)
    return [(s, s.clean.shape[0] / total) for s in setups]


def pieces(setup: "Setup | Sequence[Setup]", chunk: int | None = None) -> "Iterator[tuple[Setup, float]]":
    """``(sub-setup, its share of all prompts)`` over every group (`as_groups`) in chunks of at
    most ``chunk`` prompts, made one at a time (`Setup.chunks`): a mean over all prompts of any
    per-prompt quantity is the share-weighted sum of its chunk means."""
    for grp, share in as_groups(setup):
        for sub, part in grp.chunks(chunk):
            yield sub, share * part


def mean_parts(setup: Setup, chunk: int = 16) -> dict[Site, Parts]:
    """Mean node parts over every prompt and position (``[1, 1, n, w]`` per part), computed
    ``chunk`` prompts at a time (cached on the setup)."""
    if "mean" in setup._cache:
        return setup._cache["mean"]
    from mechscope.interp.capture import capture

    b, p = setup.clean.shape
    sums: dict[Site, list[Tensor]] = {}
    with torch.no_grad():
        for i in range(0, b, chunk):
            acts = capture(setup.model, setup.clean[i:i + chunk], setup.sites)
            for s in setup.sites:
                parts = [q.sum((0, 1), keepdim=True) for q in setup.nodes[s].split(acts[s])]
                sums[s] = parts if s not in sums else [a + q for a, q in zip(sums[s], parts)]
    setup._cache["mean"] = {s: tuple(q / (b * p) for q in v) for s, v in sums.items()}
    return setup._cache["mean"]


def masked_run(setup: Setup, keep: Mapping[Site, Tensor], repeat: int = 1) -> Tensor:
    """Metric ``[repeat x b]`` with each site's nodes where ``keep`` is False set to their
    reference values (the kept nodes are recomputed from the modified upstream), sites not in
    ``keep`` untouched. ``keep[site]`` is ``[n]``, ``[p, n]`` or ``[repeat x b, p, n]``."""
    ref = reference(setup)

    def fn(site: Site) -> Callable[[Tensor], Tensor]:
        sn, r = setup.nodes[site], tuple(p.repeat(repeat, *[1] * (p.ndim - 1)) for p in ref[site])

        def apply(a: Tensor) -> Tensor:
            return sn.merge(sn.mix(sn.split(a), r, keep[site].to(a.device)))
        return apply

    tokens = setup.clean.repeat(repeat, 1)
    with torch.no_grad():
        return metric_of(setup, run(setup, tokens, {s: fn(s) for s in keep}))


# -- node scores --------------------------------------------------------------------------------
def node_scores(setup: Setup, method: str = "atp", steps: int = 10,
                step_chunk: int | None = None) -> dict[Site, Float[Tensor, "b p n"]]:
    """Score of every node of every site, per prompt and position (see module doc)."""
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {', '.join(METHODS)}")
    if method == "ig" and steps < 1:
        raise ValueError(f"integrated gradients needs steps >= 1, got {steps}")
    clean = clean_run(setup)
    parts = split_all(setup, clean["acts"])
    if method == "grad_x_act":
        return {s: SiteNodes.score(setup.nodes[s].grads(clean["grads"][s]), parts[s]) for s in setup.sites}
    ref = reference(setup)
    delta = {s: tuple(r - p for r, p in zip(ref[s], parts[s])) for s in setup.sites}
    if method == "atp":
        return {s: SiteNodes.score(setup.nodes[s].grads(clean["grads"][s]), delta[s]) for s in setup.sites}
    return {s: SiteNodes.score(setup.nodes[s].grads(ig_gradient(setup, s, steps, step_chunk)), delta[s])
            for s in setup.sites}


def mean_node_scores(setup: Setup, method: str = "atp", steps: int = 10, chunk: int | None = None,
                     step_chunk: int | None = None) -> dict[Site, Float[Tensor, "p n"]]:
    """`node_scores` averaged over prompts, computed ``chunk`` prompts (and ``step_chunk`` IG
    steps) at a time: memory is bounded by the chunk sizes, not by the number of prompts or
    steps. Equal to ``node_scores(...).mean(0)`` (the reference is that of the whole batch)."""
    out: dict[Site, Tensor] = {}
    for sub, share in setup.chunks(chunk):
        for s, v in node_scores(sub, method, steps, step_chunk).items():
            part = v.mean(0) * share
            out[s] = part if s not in out else out[s] + part
    return out


def ig_gradient(setup: Setup, site: Site, steps: int, step_chunk: int | None = None) -> Float[Tensor, "b p ..."]:
    """Mean of ``dm/dx_S`` along the straight path from the clean to the reference activation
    of one site (midpoint rule; ``step_chunk`` points batched per pass, all by default)."""
    sn = setup.nodes[site]
    x0 = clean_run(setup)["acts"][site]
    x1 = sn.merge(reference(setup)[site]).expand_as(x0)
    b, total = x0.shape[0], torch.zeros_like(x0)
    per = steps if step_chunk is None else max(1, min(step_chunk, steps))
    for first in range(0, steps, per):
        k = min(per, steps - first)
        alpha = ((torch.arange(first, first + k, device=x0.device) + 0.5) / steps).repeat_interleave(b)
        alpha = alpha.view(-1, *[1] * (x0.ndim - 1))
        path = (x0.repeat(k, *[1] * (x0.ndim - 1)) * (1 - alpha)
                + x1.repeat(k, *[1] * (x0.ndim - 1)) * alpha).requires_grad_()
        with torch.enable_grad():
            # no name for the logits: the metric's graph keeps what it needs, and the
            # [rows, p, vocab] logits are freed before the backward
            value = metric_of(setup, run(setup, setup.clean.repeat(k, 1), {site: lambda a, v=path: v})).sum()
            (g,) = torch.autograd.grad(value, path)
            setup._cache["backward"] = setup._cache.get("backward", 0) + 1
        total += g.view(k, *x0.shape).sum(0)
    return total / steps


def later(setup: Setup, site: Site) -> list[Site]:
    """Sites strictly downstream of ``site`` in forward order."""
    return [s for s in setup.sites if site_rank(s) > site_rank(site)]
