"""The component graph of a transformer, and hooks on every edge of it.

Edge-level circuit methods (EAP, EAP-IG, ACDC) see a transformer as a DAG over the residual
stream (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"):

* **senders** write to the residual stream: the embedding (token + positional, TransformerLens'
  ``blocks.0.hook_resid_pre``), every attention head (its ``hook_result``, ``z_h W_O^h``) and
  every MLP (``hook_mlp_out``);
* **receivers** read it: every head's query, key and value input separately (TransformerLens'
  split q/k/v inputs, before the head's LayerNorm; under grouped-query attention the key / value
  receivers are the key / value heads), every MLP's input (``hook_mlp_in``) and the logits (the
  last ``resid_post``, read only by the final norm and the unembedding).

A receiver's input is the sum of the outputs of the senders upstream of it (plus constant
biases ``b_O``, ``b_out``), so an edge ``u -> r`` is one term of that sum. `ComponentGraph.of`
lists them with the ``upstream`` matrix; `component_hooks` calls ``on_send(senders, out)`` as
each sender's output is computed and lets ``on_receive(receivers, input)`` replace each
receiver's input, in the forward order, so a caller can rewrite every edge of one forward pass
(an edge-masked forward, gradients at every receiver).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool
from torch import Tensor

if TYPE_CHECKING:
    from mechscope.interp.models import Model

Send = Callable[[slice, Tensor], None]  # (sender indices, outputs [b, p, k, d_model])
Receive = Callable[[slice, Tensor], Tensor]  # (receiver indices, inputs [b, p, k, d]) -> inputs


@dataclass(frozen=True, eq=False)
class ComponentGraph:
    """Senders, receivers and which sender can reach which receiver directly.

    Names: senders ``embed``, ``L1.H2``, ``L1.mlp``; receivers ``L1.H2.q`` / ``.k`` / ``.v``
    (``L1.KV0.k`` under grouped-query attention), ``L1.mlp``, ``logits``."""

    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    upstream: Bool[Tensor, "S R"]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    attn_only: bool

    @classmethod
    def of(cls, model: "Model") -> "ComponentGraph":
        from mechscope.interp.models import Model

        model = Model.wrap(model)
        L, H, KV, attn_only = model.n_layers, model.n_heads, model.n_kv_heads, model.attn_only
        parallel = model.parallel_blocks
        senders, s_time = ["embed"], [0]
        receivers, r_time = [], []
        kv_name = (lambda l, h, c: f"L{l}.H{h}.{c}") if KV == H else (lambda l, h, c: f"L{l}.KV{h}.{c}")
        for layer in range(L):
            senders += [f"L{layer}.H{h}" for h in range(H)]
            s_time += [2 * layer + 1] * H
            receivers += [f"L{layer}.H{h}.q" for h in range(H)]
            receivers += [kv_name(layer, h, c) for c in ("k", "v") for h in range(KV)]
            r_time += [2 * layer] * (H + 2 * KV)
            if not attn_only:
                senders.append(f"L{layer}.mlp")
                s_time.append(2 * layer + 2)
                receivers.append(f"L{layer}.mlp")
                r_time.append(2 * layer + (0 if parallel else 1))
        receivers.append("logits")
        r_time.append(2 * L)
        up = torch.tensor(s_time)[:, None] <= torch.tensor(r_time)[None, :]
        return cls(tuple(senders), tuple(receivers), up, L, H, KV, attn_only)

    # -- index ranges -------------------------------------------------------------------------------
    def _block(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + (0 if self.attn_only else 1))

    def heads(self, layer: int) -> slice:
        start = self._block(layer)
        return slice(start, start + self.n_heads)

    def mlp(self, layer: int) -> int:
        if self.attn_only:
            raise ValueError("an attention-only model has no MLP senders or receivers")
        return self._block(layer) + self.n_heads

    def inputs(self, layer: int, channel: str) -> slice:
        """Receiver indices of layer ``layer``'s ``q`` / ``k`` / ``v`` inputs (or ``mlp``)."""
        per = self.n_heads + 2 * self.n_kv_heads + (0 if self.attn_only else 1)
        start = layer * per
        offsets = {"q": (0, self.n_heads), "k": (self.n_heads, self.n_kv_heads),
                   "v": (self.n_heads + self.n_kv_heads, self.n_kv_heads),
                   "mlp": (self.n_heads + 2 * self.n_kv_heads, 1)}
        if channel not in offsets or (channel == "mlp" and self.attn_only):
            raise ValueError(f"unknown input channel {channel!r}; valid: q, k, v"
                             + ("" if self.attn_only else ", mlp"))
        a, n = offsets[channel]
        return slice(start + a, start + a + n)

    @property
    def logits(self) -> int:
        return len(self.receivers) - 1

    @property
    def n_edges(self) -> int:
        return int(self.upstream.sum())


@contextmanager
def component_hooks(model: "Model", graph: ComponentGraph, on_send: Send, on_receive: Receive,
                    embed: Callable[[Tensor], Tensor] | None = None) -> Iterator[None]:
    """Hook every sender output and receiver input of ``graph`` (module doc) for the block.

    ``embed``, if given, replaces the embedding first (e.g. an interpolated input, EAP-IG)."""
    from mechscope.interp.models import Model

    model, L = Model.wrap(model), graph.n_layers

    def embed_hook(act: Tensor, hook=None) -> Tensor:  # noqa: ARG001 - TL passes the hook point
        act = embed(act) if embed is not None else act
        on_send(slice(0, 1), act[:, :, None])
        return act

    def send(idx: slice, squeeze: bool) -> Callable:
        def hook(act: Tensor, hook=None) -> None:  # noqa: ARG001
            on_send(idx, act[:, :, None] if squeeze else act)
        return hook

    def receive(idx: slice, squeeze: bool) -> Callable:
        def hook(act: Tensor, hook=None) -> Tensor:  # noqa: ARG001
            return on_receive(idx, act[:, :, None])[:, :, 0] if squeeze else on_receive(idx, act)
        return hook

    fwd = [("blocks.0.hook_resid_pre", embed_hook)]
    for layer in range(L):
        b = f"blocks.{layer}"
        fwd += [(f"{b}.hook_{c}_input", receive(graph.inputs(layer, c), False)) for c in ("q", "k", "v")]
        fwd.append((f"{b}.attn.hook_result", send(graph.heads(layer), False)))
        if not graph.attn_only:
            m = graph.mlp(layer)
            fwd.append((f"{b}.hook_mlp_in", receive(graph.inputs(layer, "mlp"), True)))
            fwd.append((f"{b}.hook_mlp_out", send(slice(m, m + 1), True)))
    fwd.append((f"blocks.{L - 1}.hook_resid_post", receive(slice(graph.logits, graph.logits + 1), True)))
    kinds = {"qkv_input", "result"} | (set() if graph.attn_only else {"mlp_in"})
    with model.optional_hook_points(kinds), model.hooks(fwd):
        yield
