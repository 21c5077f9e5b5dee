"""What dreaming maximises: a `Target`, one differentiable scalar of a model per token position.

A target reads one forward pass (the activation ``x`` at its site, and the logits) and returns a
value per position ``[batch, pos]``:

* ``feature``:   ``f_i(x)``, feature ``i`` of a dictionary at the site, computed by the
  dictionary's own ``encode`` through `mechscope.circuits.splice.SiteNodes.split` (the same
  differentiable feature activations attribution uses); it is differentiable wherever the
  feature is active and flat (zero gradient) where it is not. Where the dictionary reports a
  firing margin (`mechscope.sae.margins`: top-k, batch-top-k, JumpReLU, ReLU, gated), `margin`
  gives the search a signal there too (the surrogate of `mechscope.circuits.dream_score`);
* ``neuron``:    ``x[..., i]`` at any site (``L2.mlp_post`` for an MLP neuron);
* ``direction``: ``x · v`` for a vector ``v`` at the site (a residual direction, a probe);
* ``head``:      ``(z_h W_O^h) · v``, head ``h``'s output (site ``L.result.Hh``) along ``v``;
* ``logit``:     ``logit[t]``, or the difference ``logit[t] - logit[t']``.

``position`` chooses the scalar that is optimised: ``None`` takes the maximum over the prompt's
positions, an integer ``p`` the value at prompt token ``p`` (negative counts from the end).
Positions index the dreamed prompt, never a prepended BOS token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechscope.circuits.splice import SiteNodes
from mechscope.interp.sites import Site

KINDS = ("feature", "neuron", "direction", "head", "logit")


@dataclass(frozen=True, eq=False)
class Target:
    """A scalar to dream about; build it with one of the constructors, not directly."""

    kind: str
    label: str
    site: Site | None = None
    index: int | None = None
    vector: Float[Tensor, "d"] | None = None
    dictionary: Any = None
    tokens: tuple[int, ...] = ()
    position: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown target kind {self.kind!r}; valid: {', '.join(KINDS)}")

    # -- constructors -----------------------------------------------------------------------------
    @classmethod
    def feature(cls, site: "str | Site", dictionary: Any, index: int, position: int | None = None) -> "Target":
        """Feature ``index`` of ``dictionary`` at ``site``: any `mechscope.sae.dictionary.Dictionary`,
        or a SAELens SAE / sparsify coder (wrapped by `mechscope.sae.adapters.as_dictionary`)."""
        from mechscope.sae.adapters import as_dictionary

        site, dictionary = Site.parse(site), as_dictionary(dictionary)
        for attr in ("d_in", "d_dict", "encode", "decode", "directions"):
            if not hasattr(dictionary, attr):
                raise TypeError(f"feature target: the dictionary has no {attr!r}; it must implement "
                                f"mechscope.sae.dictionary.Dictionary")
        if not 0 <= index < dictionary.d_dict:
            raise ValueError(f"feature index {index} out of range; the dictionary has d_dict={dictionary.d_dict}")
        return cls("feature", f"{site}.f{index}", site, index, dictionary=dictionary, position=position)

    @classmethod
    def neuron(cls, site: "str | Site", index: int, position: int | None = None) -> "Target":
        """Unit ``index`` of the activation at ``site`` (e.g. ``L2.mlp_post``)."""
        site = Site.parse(site)
        if index < 0:
            raise ValueError(f"neuron index must be >= 0, got {index}")
        return cls("neuron", f"{site}[{index}]", site, index, position=position)

    @classmethod
    def direction(cls, site: "str | Site", vector: Tensor, position: int | None = None,
                  name: str = "v") -> "Target":
        """``x · vector`` at ``site`` (a residual direction, a probe, a decoder atom...)."""
        site = Site.parse(site)
        return cls("direction", f"{site}·{name}", site, vector=_vector(vector), position=position)

    @classmethod
    def head(cls, layer: int, head: int, vector: Tensor, position: int | None = None,
             name: str = "v") -> "Target":
        """Head ``(layer, head)``'s output in the residual stream along ``vector``."""
        site = Site(layer, "result", head)
        return cls("head", f"L{layer}H{head}·{name}", site, vector=_vector(vector), position=position)

    @classmethod
    def logit(cls, token: int, other: int | None = None, position: int | None = -1,
              name: str | None = None) -> "Target":
        """``logit[token]`` (minus ``logit[other]``) at ``position`` (default: the last token)."""
        toks = (int(token),) if other is None else (int(token), int(other))
        label = name or (f"logit[{token}]" if other is None else f"logit[{token}]-logit[{other}]")
        return cls("logit", label, tokens=toks, position=position)

    def at(self, position: int | None) -> "Target":
        """The same target at another position (``None``: max over positions)."""
        return Target(self.kind, self.label, self.site, self.index, self.vector, self.dictionary,
                      self.tokens, position)

    def describe(self) -> str:
        where = "max over positions" if self.position is None else f"position {self.position}"
        return f"{self.label} ({where})"

    # -- reading a forward pass -------------------------------------------------------------------
    def bind(self, model: Any) -> "BoundTarget":
        """Validate against ``model`` once (site, widths, token ids) and prepare the reader."""
        from mechscope.interp.capture import capture

        if self.kind == "logit":
            bad = [t for t in self.tokens if not 0 <= t < model.d_vocab]
            if bad:
                raise ValueError(f"logit target: token ids {bad} out of range 0..{model.d_vocab - 1}")
            return BoundTarget(self, None, None)
        site = model.site(self.site)
        shape = tuple(capture(model, torch.zeros(1, 2, dtype=torch.long), [site])[site].shape[2:])
        nodes = None
        if self.kind == "feature":
            from mechscope.sae.margins import has_firing_margin

            nodes = SiteNodes.make(site, self.dictionary, shape)
            return BoundTarget(self, site, nodes, has_firing_margin(self.dictionary))
        elif len(shape) != 1:
            raise ValueError(f"{self.kind} target: site {site} has activations of shape {list(shape)} "
                             f"per position; use a site with one vector per position (a head's slice "
                             f"such as L0.z.H1, or resid / mlp / attn_out sites)")
        elif self.kind == "neuron" and self.index >= shape[0]:
            raise ValueError(f"neuron {self.index} out of range: {site} has width {shape[0]}")
        elif self.kind in ("direction", "head") and self.vector.shape[0] != shape[0]:
            raise ValueError(f"{self.kind} target: the vector has length {self.vector.shape[0]} but "
                             f"{site} has width {shape[0]}")
        return BoundTarget(self, site, nodes)


@dataclass(frozen=True, eq=False)
class BoundTarget:
    """A target validated against one model; ``read`` gives the value at every position."""

    target: Target
    site: Site | None
    nodes: SiteNodes | None
    has_margin: bool = False  # a feature whose dictionary reports a firing margin (the surrogate)

    def read(self, act: Tensor | None, logits: Float[Tensor, "b p v"]) -> Float[Tensor, "b p"]:
        t = self.target
        if t.kind == "logit":
            out = logits[..., t.tokens[0]]
            return out if len(t.tokens) == 1 else out - logits[..., t.tokens[1]]
        if t.kind == "feature":
            return self.nodes.split(act)[0][..., t.index, 0]
        if t.kind == "neuron":
            return act[..., t.index]
        return act @ t.vector.to(act)

    def margin(self, act: Tensor) -> Float[Tensor, "b p"]:
        """The feature's firing margin (`mechscope.sae.margins`): > 0 exactly where it fires."""
        from mechscope.sae.margins import firing_margin

        b, p = act.shape[:2]
        flat = act.reshape(b * p, -1)  # a site with per-head trailing dims is one vector per position
        return firing_margin(self.target.dictionary, flat)[:, self.target.index].reshape(b, p)


def _vector(v: Tensor) -> Tensor:
    v = torch.as_tensor(v, dtype=torch.float32).detach()
    if v.ndim != 1 or not torch.isfinite(v).all():
        raise ValueError(f"a target direction must be a finite 1-D vector, got shape {list(v.shape)}")
    return v
