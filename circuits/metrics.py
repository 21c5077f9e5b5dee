"""Metrics: functions of the logits that circuits explain, one value per prompt.

A metric maps logits ``[b, pos, vocab]`` to ``[b]``. Every method (`feature_circuits.trace`,
`edges.edge_circuit`, `verify`) calls it on the logits of its prompts (or of ``K`` stacked copies,
split back into batches of ``b``), and averages over prompts. Metrics made here also carry
``select(rows)``: the same metric for a subset of the prompts (what chunked attribution needs
when a metric holds per-prompt data such as a target token).

Positions. Every metric of a single position takes ``position``:

* an ``int``: that position in every prompt (``-1``: the last);
* a sequence of ints: the metric at each, averaged (``[3, 5]``);
* an integer tensor ``[b]``: one position per prompt (the answer position when prompts differ);
* ``"all"``: every position, averaged.

So ``m = (1/|P|) sum_{p in P} m_p`` with ``m_p`` the metric read at position ``p``.

Definitions, with ``l`` the logits and ``q = softmax(l)`` at a position:

* ``logit_diff(a, b)``: ``l[a] - l[b]``;
* ``logprob(t)``: ``log q[t]``;
* ``next_token_logprob(tokens, mask)``: mean of ``log q_t[tokens[t + 1]]`` over masked ``t``;
* ``set_logit_diff(G, B)``: ``mean_{g in G} l[g] - mean_{b in B} l[b]`` — a logit difference
  between two sets of tokens (e.g. numbers above and below a threshold);
* ``prob_diff(G, B)``: ``sum_{g in G} q[g] - sum_{b in B} q[b]`` — the probability difference of
  the greater-than task (Hanna et al. 2023, "How does GPT-2 compute greater-than?",
  arXiv:2305.00586); ``prob_mass(G)`` is ``sum_{g in G} q[g]``;
* ``expected_value(T, v)``: ``sum_i q[T_i] v_i / sum_i q[T_i]`` — the expected numerical answer
  over number tokens ``T_i`` with values ``v_i``, renormalised over those tokens (``renormalise
  =False``: the plain ``sum_i q[T_i] v_i``).

Token sets are token ids (a sequence), a boolean mask ``[vocab]``, or one mask per prompt
``[b, vocab]`` (e.g. "years greater than this prompt's year").

A user metric. Every method accepts a plain function ``logits -> [b]`` as the metric; computing
in chunks of prompts (``chunk=``) additionally needs ``select``, which `custom(fn)` adds: ``fn(logits)
-> [b]`` (each prompt's value from its own row of logits, no per-prompt data) or ``fn(logits,
rows) -> [b]`` (``rows``: the indices of the prompts in the full batch, to look up per-prompt data
such as targets). `custom` checks that the value is one number per prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

Metric = Callable[[Tensor], Tensor]  # logits [b, pos, vocab] -> one value per prompt [b]
Positions = Union[int, Sequence[int], Int[Tensor, "b"], str]
TokenSet = Union[Sequence[int], Bool[Tensor, "vocab"], Bool[Tensor, "b vocab"]]


def named(fn: Metric, name: str, select: Callable[[Tensor], Metric] | None = None) -> Metric:
    """Name a metric; ``select(rows)`` gives the same metric for a subset of the prompts (what
    chunked attribution needs: a metric defined per prompt, e.g. with a target per prompt)."""
    fn.__name__ = name  # type: ignore[attr-defined]
    if select is not None:
        fn.select = select  # type: ignore[attr-defined]
    return fn


# -- positions ----------------------------------------------------------------------------------
def check_positions(position: Positions) -> Positions:
    """Validate a position spec once (module doc); returns it (a list for sequences)."""
    if isinstance(position, str):
        if position != "all":
            raise ValueError(f"unknown position {position!r}; valid: an int, a list of ints, "
                             f"a tensor of one position per prompt, or 'all'")
        return position
    if isinstance(position, Tensor):
        if position.ndim != 1 or position.dtype.is_floating_point or position.dtype == torch.bool:
            raise ValueError(f"per-prompt positions must be an integer tensor [b], got "
                             f"{position.dtype} of shape {list(position.shape)}")
        return position
    if isinstance(position, int):
        return position
    out = list(position)
    if not out or not all(isinstance(p, int) for p in out):
        raise ValueError(f"positions must be a non-empty list of ints, got {position!r}")
    return out


def at(logits: Float[Tensor, "b pos vocab"], position: Positions) -> Float[Tensor, "b k vocab"]:
    """The logits at ``position`` (module doc), ``k`` positions per prompt."""
    b, n = logits.shape[:2]
    if isinstance(position, str):
        return logits
    if isinstance(position, Tensor):
        if position.shape[0] != b:
            raise ValueError(f"per-prompt positions: {position.shape[0]} given for {b} prompts")
        idx = position.to(logits.device) % n
        return logits[torch.arange(b, device=logits.device), idx][:, None]
    pos = [position] if isinstance(position, int) else list(position)
    bad = [p for p in pos if not -n <= p < n]
    if bad:
        raise ValueError(f"positions {bad} out of range for prompts of {n} tokens")
    return logits[:, pos]


def _rows_of(position: Any, rows: Tensor) -> Any:
    return position[rows] if isinstance(position, Tensor) else position


def _per_prompt(x: "int | Tensor") -> "int | Tensor":
    return x if isinstance(x, int) else torch.as_tensor(x).view(-1)


def _pick(values: Tensor, token: "int | Tensor") -> Tensor:
    """``values[b, k, vocab]`` at one token per prompt (or one for all) -> ``[b, k]``."""
    if isinstance(token, int):
        return values[..., token]
    if token.shape[0] != values.shape[0]:
        raise ValueError(f"{token.shape[0]} target tokens given for {values.shape[0]} prompts")
    t = token.to(values.device).view(-1, 1, 1).expand(-1, values.shape[1], 1)
    return values.gather(-1, t)[..., 0]


def _sel(x: Any, rows: Tensor) -> Any:
    return x if isinstance(x, int) else x[rows]


# -- single-token metrics -------------------------------------------------------------------------
def logit_diff(correct: "Int[Tensor, 'b'] | int", incorrect: "Int[Tensor, 'b'] | int",
               position: Positions = -1) -> Metric:
    """``logit[correct] - logit[incorrect]`` at ``position`` of each prompt."""
    correct, incorrect, position = _per_prompt(correct), _per_prompt(incorrect), check_positions(position)

    def metric(logits: Tensor) -> Tensor:
        x = at(logits, position)
        return (_pick(x, correct) - _pick(x, incorrect)).mean(1)
    metric.position = position  # type: ignore[attr-defined]
    return named(metric, "logit_diff", lambda r: logit_diff(_sel(correct, r), _sel(incorrect, r),
                                                            _rows_of(position, r)))


def logprob(target: "Int[Tensor, 'b'] | int", position: Positions = -1) -> Metric:
    """``log p(target)`` at ``position`` of each prompt."""
    target, position = _per_prompt(target), check_positions(position)

    def metric(logits: Tensor) -> Tensor:
        return _pick(at(logits, position).log_softmax(-1), target).mean(1)
    metric.position = position  # type: ignore[attr-defined]
    return named(metric, "logprob", lambda r: logprob(_sel(target, r), _rows_of(position, r)))


def next_token_logprob(tokens: Int[Tensor, "b p"], mask: Tensor | None = None) -> Metric:
    """Mean ``log p(tokens[t+1])`` over positions ``t`` where ``mask[:, t + 1]`` (all if None);
    for induction, the mask of the repeated half."""
    def metric(logits: Tensor) -> Tensor:
        toks = tokens.to(logits.device)
        lp = logits[:, :-1].log_softmax(-1).gather(-1, toks[:, 1:, None])[..., 0]
        m = torch.ones_like(lp) if mask is None else mask[:, 1:].to(lp)
        return (lp * m).sum(1) / m.sum(1).clamp_min(1)
    return named(metric, "next_token_logprob",
                 lambda r: next_token_logprob(tokens[r], None if mask is None else mask[r]))


# -- token sets and numerical answers -------------------------------------------------------------
def token_mask(tokens: TokenSet, vocab: int, device: "torch.device | str" = "cpu") -> Tensor:
    """A token set (module doc) as a float mask ``[vocab]`` or ``[b, vocab]``."""
    if isinstance(tokens, Tensor) and tokens.dtype == torch.bool:
        if tokens.shape[-1] != vocab or tokens.ndim not in (1, 2):
            raise ValueError(f"a token mask must be [vocab] or [b, vocab] with vocab {vocab}, "
                             f"got {list(tokens.shape)}")
        mask = tokens.to(device, torch.float32)
    else:
        ids = torch.as_tensor(list(tokens) if not isinstance(tokens, Tensor) else tokens).view(-1)
        if ids.numel() == 0 or ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"a token set must be non-empty ids in [0, {vocab}), got {ids.tolist()}")
        mask = torch.zeros(vocab, device=device)
        mask[ids.to(device)] = 1.0
    if (mask.sum(-1) == 0).any():
        raise ValueError("a token set is empty (for some prompt)")
    return mask


def _mask_rows(tokens: Any, rows: Tensor) -> Any:
    return tokens[rows] if isinstance(tokens, Tensor) and tokens.dtype == torch.bool and tokens.ndim == 2 else tokens


def _weighted(values: Float[Tensor, "b k vocab"], mask: Tensor, mean: bool) -> Float[Tensor, "b k"]:
    w = mask if mask.ndim == 1 else mask[:, None]
    s = (values * w).sum(-1)
    return s / w.sum(-1) if mean else s


def set_logit_diff(good: TokenSet, bad: TokenSet, position: Positions = -1) -> Metric:
    """Mean logit over ``good`` minus mean logit over ``bad`` at ``position``."""
    position = check_positions(position)

    def metric(logits: Tensor) -> Tensor:
        x, v, dev = at(logits, position), logits.shape[-1], logits.device
        return (_weighted(x, token_mask(good, v, dev), True) - _weighted(x, token_mask(bad, v, dev), True)).mean(1)
    return named(metric, "set_logit_diff", lambda r: set_logit_diff(
        _mask_rows(good, r), _mask_rows(bad, r), _rows_of(position, r)))


def prob_mass(tokens: TokenSet, position: Positions = -1) -> Metric:
    """``sum_{t in tokens} p(t)`` at ``position``."""
    position = check_positions(position)

    def metric(logits: Tensor) -> Tensor:
        q = at(logits, position).softmax(-1)
        return _weighted(q, token_mask(tokens, logits.shape[-1], logits.device), False).mean(1)
    return named(metric, "prob_mass", lambda r: prob_mass(_mask_rows(tokens, r), _rows_of(position, r)))


def prob_diff(good: TokenSet, bad: TokenSet, position: Positions = -1) -> Metric:
    """``sum_{g in good} p(g) - sum_{b in bad} p(b)`` at ``position`` (greater-than; module doc)."""
    position = check_positions(position)

    def metric(logits: Tensor) -> Tensor:
        q, v, dev = at(logits, position).softmax(-1), logits.shape[-1], logits.device
        return (_weighted(q, token_mask(good, v, dev), False) - _weighted(q, token_mask(bad, v, dev), False)).mean(1)
    return named(metric, "prob_diff", lambda r: prob_diff(_mask_rows(good, r), _mask_rows(bad, r),
                                                          _rows_of(position, r)))


def expected_value(tokens: Sequence[int] | Int[Tensor, "n"], values: Sequence[float] | Float[Tensor, "n"],
                   position: Positions = -1, renormalise: bool = True) -> Metric:
    """Expected numerical answer ``sum_i p(T_i) v_i`` over number tokens ``T_i`` with values
    ``v_i``, divided by ``sum_i p(T_i)`` when ``renormalise`` (module doc)."""
    ids = torch.as_tensor(list(tokens) if not isinstance(tokens, Tensor) else tokens).view(-1).long()
    vals = torch.as_tensor(list(values) if not isinstance(values, Tensor) else values, dtype=torch.float32).view(-1)
    if ids.numel() == 0 or ids.shape != vals.shape:
        raise ValueError(f"expected_value needs one value per number token, got {ids.numel()} tokens "
                         f"and {vals.numel()} values")
    position = check_positions(position)

    def metric(logits: Tensor) -> Tensor:
        if int(ids.max()) >= logits.shape[-1] or int(ids.min()) < 0:
            raise ValueError(f"number tokens {ids.tolist()} out of the vocabulary ({logits.shape[-1]})")
        q = at(logits, position).softmax(-1)[..., ids.to(logits.device)]
        ev = (q * vals.to(q)).sum(-1)
        return (ev / q.sum(-1) if renormalise else ev).mean(1)
    return named(metric, "expected_value", lambda r: expected_value(ids, vals, _rows_of(position, r), renormalise))


# -- user metrics ---------------------------------------------------------------------------------
def _takes_rows(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: logits only
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def custom(fn: Any, name: str | None = None) -> Metric:
    """A user metric (module doc): ``fn(logits) -> [b]`` or ``fn(logits, rows) -> [b]``."""
    if not callable(fn):
        raise TypeError(f"a metric must be callable (logits [b, pos, vocab] -> [b]), got {type(fn).__name__}")
    label = name or getattr(fn, "__name__", "custom")
    rows_arg = _takes_rows(fn)

    def make(rows: Tensor | None) -> Metric:
        def metric(logits: Tensor) -> Tensor:
            b = logits.shape[0]
            idx = torch.arange(b) if rows is None else rows
            if rows_arg and idx.shape[0] != b:
                raise ValueError(f"metric {label!r} is defined for {idx.shape[0]} prompts, called "
                                 f"with logits of {b}")
            out = fn(logits, idx.to(logits.device)) if rows_arg else fn(logits)
            if not isinstance(out, Tensor) or out.shape != (b,):
                got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"metric {label!r} must return one value per prompt, a tensor [{b}]; "
                                 f"got {got}")
            return out
        return named(metric, label, lambda r: make(torch.as_tensor(r) if rows is None else rows[r]))
    return make(None)

