"""A site's activation as a sum of nodes: dictionary features and an error term, heads, or one.

Sparse feature circuits (Marks et al. 2024, "Sparse Feature Circuits: Discovering and Editing
Interpretable Causal Graphs in Language Models", arXiv:2403.19647) splice a dictionary into the
model at a site without changing its output: with a linear decoder (atoms ``d_i``, bias ``b``)

    x = sum_i f_i(x) d_i + b + e(x),        e(x) = x - decode(encode(x)),

so the features ``f_i`` and the error ``e`` are nodes whose values add up to ``x`` exactly. Every
site here is written that way, as *parts* of shape ``[batch, pos, n_nodes, width]`` whose merge is
affine:

* dictionary site: features ``f [b, p, d_dict, 1]`` and the error ``e [b, p, 1, d]``;
  ``merge = f · directions + b + e`` (``b = decode(empty code)``); 4-D sites (``L0.z``) are
  flattened to ``[b, p, heads · d_head]``, the layout of concatenated-z attention SAEs;
* per-head site without dictionary (``L0.z``, ``L0.result``): one node per head, ``[b, p, H, w]``;
* any other site without dictionary: one node, ``[b, p, 1, d]``.

Because ``merge`` is affine, the gradient of a metric ``m`` with respect to a part is the adjoint
of the gradient ``g = dm/dx`` (features: ``g · d_i``; error, heads, whole: ``g`` itself), and a node's
first-order effect is ``sum_w grad_part * delta_part`` — which is how `attribution` scores nodes.
The error is taken relative to the affine reconstruction, so ``merge(split(x)) == x`` holds for
every dictionary (it equals ``x - decode(encode(x))`` for linear-decoder dictionaries, i.e. all
of `mechscope.sae.dictionary.Dictionary`'s kinds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechscope.circuits.node_ids import NodeKey, head_label
from mechscope.interp.sites import Site
from mechscope.kernels.code import SparseCode

Parts = tuple[Tensor, ...]

# forward order of the site kinds inside one block
_ORDER = ("resid_pre", "q", "k", "v", "scores", "pattern", "z", "result", "attn_out", "resid_mid",
          "mlp_in", "mlp_pre", "mlp_post", "mlp_out", "resid_post")
_NOT_ADDITIVE = ("q", "k", "scores", "pattern")
_WHOLE_KIND = {"attn_out": "attention", "z": "head", "result": "head", "v": "head",
               "mlp_in": "mlp", "mlp_pre": "mlp", "mlp_post": "mlp", "mlp_out": "mlp",
               "resid_pre": "residual", "resid_mid": "residual", "resid_post": "residual"}


def site_rank(site: Site) -> tuple[int, int]:
    """Forward order of a site: sites of equal rank read the same hook point."""
    return (site.layer, _ORDER.index(site.kind))


@dataclass(frozen=True, eq=False)
class SiteNodes:
    """How one site splits into nodes; built by `SiteNodes.make` from a sample activation."""

    site: Site
    dictionary: Any  # a mechscope.sae.dictionary.Dictionary, or None
    act_shape: tuple[int, ...]  # trailing shape of the site's activation (after batch, pos)
    directions: Tensor | None = None
    bias: Tensor | None = None

    @classmethod
    def make(cls, site: Site, dictionary: Any, act_shape: tuple[int, ...]) -> "SiteNodes":
        if site.kind in _NOT_ADDITIVE:
            raise ValueError(f"site {site}: {site.kind!r} activations are not a sum of component "
                             f"outputs; use z, result, attn_out, mlp_out, mlp_post or resid sites")
        if dictionary is None:
            return cls(site, None, tuple(act_shape))
        width = int(torch.tensor(act_shape).prod())
        for attr in ("d_in", "d_dict", "encode", "decode", "directions"):
            if not hasattr(dictionary, attr):
                raise TypeError(f"dictionary for {site} has no {attr!r}: it must implement "
                                f"mechscope.sae.dictionary.Dictionary")
        d_out = getattr(dictionary, "d_out", dictionary.d_in)
        if dictionary.d_in != width or d_out != width:
            raise ValueError(f"dictionary for site {site} has d_in={dictionary.d_in}, d_out={d_out} "
                             f"but the site's activations have width {width} (shape "
                             f"{list(act_shape)}); use a dictionary trained on {site} (transcoders, "
                             f"whose output site differs, cannot be spliced in here)")
        with torch.no_grad():
            dirs = dictionary.directions.detach().float()
            empty = SparseCode(torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long))
            bias = dictionary.decode(empty).detach().reshape(width).float()
        if tuple(dirs.shape) != (dictionary.d_dict, width):
            raise ValueError(f"dictionary for {site}: directions have shape {list(dirs.shape)}, "
                             f"expected [d_dict={dictionary.d_dict}, {width}]")
        return cls(site, dictionary, tuple(act_shape), dirs, bias)

    # -- node bookkeeping -------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(torch.tensor(self.act_shape).prod())

    @property
    def per_head(self) -> bool:
        return self.dictionary is None and len(self.act_shape) == 2

    @property
    def n_nodes(self) -> int:
        if self.dictionary is not None:
            return self.dictionary.d_dict + 1
        return self.act_shape[0] if self.per_head else 1

    def describe(self, j: int) -> tuple[str, int | None, str]:
        """``(graph node kind, index, label)`` of node ``j`` of this site."""
        s = str(self.site)
        if self.dictionary is not None:
            if j == self.dictionary.d_dict:
                return "error", None, f"{s} error"
            return "feature", j, f"{s} #{j}"
        if self.per_head:
            return "head", j, head_label(self.site.layer, j)
        if self.site.head is not None:
            return "head", self.site.head, head_label(self.site.layer, self.site.head)
        return _WHOLE_KIND[self.site.kind], None, s

    def index_of(self, key: NodeKey) -> int | None:
        """The node of this site that is the component ``key`` (a parsed canonical node id), or
        None: the inverse of `describe`, used to read graphs of any method back into masks."""
        if self.dictionary is not None:
            if key.site != str(self.site):
                return None
            if key.kind == "error":
                return self.dictionary.d_dict
            ok = key.kind == "feature" and key.index is not None and 0 <= key.index < self.dictionary.d_dict
            return key.index if ok else None
        if key.layer != self.site.layer:
            return None
        for j in range(self.n_nodes):
            kind, index, _ = self.describe(j)
            if kind == key.kind and index == key.index and (kind != "residual" or key.site == str(self.site)):
                return j
        return None

    # -- split / merge ----------------------------------------------------------------------------
    def _flat(self, act: Tensor) -> Tensor:
        return act.reshape(*act.shape[:2], self.width)

    def split(self, act: Float[Tensor, "b p ..."]) -> Parts:
        """Node parts ``[b, p, n, w]`` of an activation (in the autograd graph of ``act``)."""
        if self.dictionary is None:
            return (act if self.per_head else act.reshape(*act.shape[:2], 1, self.width),)
        x = self._flat(act)
        b, p, d = x.shape
        code = self.dictionary.encode(x.reshape(b * p, d))
        f = code.dense(self.dictionary.d_dict).reshape(b, p, -1).to(x.dtype)
        e = x - f @ self.directions.to(x) - self.bias.to(x)
        return (f[..., None], e[:, :, None, :])

    def merge(self, parts: Parts) -> Tensor:
        """The activation ``[b, p, ...]`` whose nodes are ``parts`` (affine in the parts)."""
        if self.dictionary is None:
            (a,) = parts
            return a.reshape(*a.shape[:2], *self.act_shape)
        f, e = parts
        x = f[..., 0] @ self.directions.to(f) + self.bias.to(f) + e[:, :, 0, :]
        return x.reshape(*x.shape[:2], *self.act_shape)

    def grads(self, g: Float[Tensor, "b p ..."]) -> Parts:
        """Gradient of a function of the activation w.r.t. the parts, from its gradient ``g``."""
        if self.dictionary is None:
            return self.split(g)
        g = self._flat(g)
        return ((g @ self.directions.to(g).T)[..., None], g[:, :, None, :])

    @staticmethod
    def score(grads: Parts, delta: Parts) -> Float[Tensor, "b p n"]:
        """First-order effect of each node: ``sum_w grad * delta``, nodes concatenated."""
        return torch.cat([(g * d).sum(-1) for g, d in zip(grads, delta)], dim=-1)

    def mix(self, parts: Parts, ref: Parts, keep: Bool[Tensor, "... n"]) -> Parts:
        """Parts with the nodes where ``keep`` is False replaced by their ``ref`` values.

        ``keep`` is ``[n]``, ``[p, n]`` or ``[b, p, n]`` (broadcast like the parts' leading axes)."""
        out, start = [], 0
        for part, r in zip(parts, ref):
            n = part.shape[2]
            k = keep[..., start:start + n, None]
            out.append(torch.where(k, part, r.to(part)))
            start += n
        return tuple(out)
