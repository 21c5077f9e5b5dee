"""Scoring prompts for dreaming: one forward pass gives the target and the cross-entropy.

For a prompt ``t_1 ... t_n`` (after the model's BOS token when it has one) the target is read at
every prompt position and reduced as the `Target` says (one position, or the max), and

    CE(t) = -(1/m) sum_j log p(t_j | t_<j)

over the ``m`` predicted prompt tokens (all ``n`` after a BOS, else ``n - 1``). Gradients for
Greedy Coordinate Gradient (Zou et al. 2023, arXiv:2307.15043) replace the token embedding by
``onehot(t) W_E`` through a hook on ``hook_embed``; CE then reads the one-hot too, so its gradient
counts both the token's own surprise and its effect on the tokens after it. Prompts of several
lengths share a batch right-padded: attention is causal, so padding never reaches real tokens,
and padded positions are masked out of both terms.

*Surrogate* (for rare features of thresholded dictionaries). A top-k feature outside the top k,
a JumpReLU feature under its threshold, has activation 0 and zero gradient: GCG gets no
candidates and selection sees ties, so a feature that fires on none of the initial prompts is
never found. With ``surrogate`` the search (gradients and selection, not the reported activation
or the frontier) reads, per position,

    s = f            where the feature fires (f > 0),
    s = min(m, 0)    elsewhere, m the firing margin (`mechscope.sae.margins`),

so it climbs the pre-activation's margin to the k-th largest (top-k) or to the threshold
(JumpReLU) until the feature enters the code, then the real activation. ``s`` is monotone in the
margin, and ``s = f`` on every prompt where the feature fires, so the frontier is unchanged there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mechscope.circuits.dream_targets import BoundTarget, Target
from mechscope.interp.capture import hooks_for

EMBED_HOOK = "hook_embed"


class Scores(NamedTuple):
    """One forward pass of a batch of prompts."""

    act: Tensor  # [b] the target, reduced over positions as the Target says
    ce: Tensor  # [b] mean next-token cross-entropy of the prompt
    per_token: Tensor  # [b, L] the target at every position, NaN on padding
    search: Tensor  # [b] what the search maximises: act, or the surrogate (module doc)


@dataclass
class Batch:
    """Prompts (right-padded ``ids [b, L]``, ``lengths [b]``) and their scores."""

    ids: Tensor
    lengths: Tensor
    act: Tensor
    ce: Tensor
    per_token: Tensor
    search: Tensor

    def take(self, idx: Tensor) -> "Batch":
        return Batch(self.ids[idx], self.lengths[idx], self.act[idx], self.ce[idx], self.per_token[idx],
                     self.search[idx])

    @staticmethod
    def cat(a: "Batch", b: "Batch") -> "Batch":
        width = max(a.ids.shape[1], b.ids.shape[1])
        pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
        return Batch(torch.cat([pad(a.ids, 0), pad(b.ids, 0)]), torch.cat([a.lengths, b.lengths]),
                      torch.cat([a.act, b.act]), torch.cat([a.ce, b.ce]),
                      torch.cat([pad(a.per_token, float("nan")), pad(b.per_token, float("nan"))]),
                      torch.cat([a.search, b.search]))


class Scorer:
    """Forward passes of prompts: target value, per-token values and cross-entropy."""

    def __init__(self, model: Any, target: Target, bos: bool | None, surrogate: bool = False) -> None:
        self.model, self.target = model, target
        self.bound: BoundTarget = target.bind(model)
        self.surrogate = surrogate and self.bound.has_margin  # only features whose dictionary has a margin
        bos_id = model.bos_id
        if bos and bos_id is None:
            raise ValueError(f"bos=True but model {model.name!r} has no BOS token id")
        self.bos = bos_id if (bos is None or bos) else None

    def forward(self, ids: Tensor, lengths: Tensor, one_hot: Tensor | None = None) -> Scores:
        """The target, cross-entropy, per-token values and the search value of each prompt."""
        model, b, n = self.model, ids.shape[0], ids.shape[1]
        dev = model.device
        ids = ids.to(dev)
        off = 0 if self.bos is None else 1
        full = ids if off == 0 else torch.cat([torch.full((b, 1), self.bos, device=dev), ids], 1)
        store: dict[str, Tensor] = {}
        site_fns = {} if self.bound.site is None else {self.bound.site: lambda a: store.setdefault("act", a)}
        hooks = [] if one_hot is None else [(EMBED_HOOK, self._embed_hook(one_hot, off))]
        with model.hooks(hooks), hooks_for(model, site_fns):
            logits = model(full)
        valid = torch.arange(n, device=dev)[None] < lengths.to(dev)[:, None]
        values = self.bound.read(store.get("act"), logits).float()[:, off:off + n]
        per_token = values.masked_fill(~valid, float("nan"))
        act = self._reduce(values, valid, lengths.to(dev))
        search = act
        if self.surrogate:
            margin = self.bound.margin(store["act"]).float()[:, off:off + n]
            search = self._reduce(torch.where(values > 0, values, margin.clamp(max=0)), valid, lengths.to(dev))
        logp = logits[:, :n + off - 1].float().log_softmax(-1)
        if one_hot is None:
            lp = logp.gather(-1, ids[:, 1 - off:, None])[..., 0]
        else:  # differentiable in the one-hot too, as in the paper's code
            lp = (logp * one_hot[:, 1 - off:].to(logp)).sum(-1)
        mask = valid[:, 1 - off:].to(lp)
        ce = -(lp * mask).sum(1) / mask.sum(1).clamp_min(1)
        return Scores(act, ce, per_token, search)

    def _embed_hook(self, one_hot: Tensor, off: int):
        W_E = self.model.W_E

        def hook(act: Tensor, hook: Any = None) -> Tensor:  # noqa: ARG001 - TL passes the hook point
            e = one_hot.to(W_E) @ W_E
            return e if off == 0 else torch.cat([act[:, :1], e], 1)
        return hook

    def _reduce(self, values: Tensor, valid: Tensor, lengths: Tensor) -> Tensor:
        p = self.target.position
        if p is None:
            return values.masked_fill(~valid, float("-inf")).amax(1)
        idx = torch.full_like(lengths, p) if p >= 0 else lengths + p
        return values.gather(1, idx[:, None])[:, 0]

    @torch.no_grad()
    def score(self, ids: Tensor, lengths: Tensor, batch_size: int) -> Batch:
        outs = [self.forward(ids[i:i + batch_size], lengths[i:i + batch_size])
                for i in range(0, ids.shape[0], batch_size)]
        act, ce, per, search = (torch.cat([o[k] for o in outs]).cpu() for k in range(4))
        return Batch(ids.cpu(), lengths.cpu(), act, ce, per, search)

    def candidates(self, pop: Batch, lambdas: Tensor, allowed: Tensor, topk: int,
                   batch_size: int) -> Tensor:
        """Top-``topk`` allowed tokens per member and position by ``∂(f - λ CE)/∂onehot`` (``f``:
        the search value, the surrogate where it is on)."""
        out = []
        V = self.model.d_vocab
        for i in range(0, pop.ids.shape[0], batch_size):
            ids, lengths = pop.ids[i:i + batch_size], pop.lengths[i:i + batch_size]
            one_hot = torch.nn.functional.one_hot(ids, V).float().to(self.model.device).requires_grad_()
            with torch.enable_grad():
                scores = self.forward(ids, lengths, one_hot)
                act, ce = scores.search, scores.ce
                objective = act - lambdas[i:i + batch_size].to(act) * ce
                (g,) = torch.autograd.grad(objective.sum(), one_hot)
            g = g.float().masked_fill(~allowed.to(g.device), float("-inf"))
            out.append(g.topk(min(topk, int(allowed.sum())), dim=-1).indices.cpu())
        return torch.cat(out)


def default_allowed(model: Any) -> Tensor:
    """Every token except the tokenizer's special tokens (BOS / EOS / padding...)."""
    allowed = torch.ones(model.d_vocab, dtype=torch.bool)
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", None) or []) if tok is not None else set()
    if model.bos_id is not None:
        special.add(model.bos_id)
    allowed[[t for t in special if 0 <= t < model.d_vocab]] = False
    return allowed


def allowed_mask(model: Any, allowed: Any) -> Tensor:
    if allowed is None:
        mask = default_allowed(model)
    elif isinstance(allowed, Tensor) and allowed.dtype == torch.bool:
        if allowed.shape != (model.d_vocab,):
            raise ValueError(f"an allowed-token mask must have shape [{model.d_vocab}], got {list(allowed.shape)}")
        mask = allowed.cpu().clone()
    else:
        ids = [int(t) for t in allowed]
        bad = [t for t in ids if not 0 <= t < model.d_vocab]
        if bad:
            raise ValueError(f"allowed token ids {bad[:5]} out of range 0..{model.d_vocab - 1}")
        mask = torch.zeros(model.d_vocab, dtype=torch.bool)
        mask[ids] = True
    if not mask.any():
        raise ValueError("no token is allowed")
    return mask

