"""Metric specs of the tracing commands (``--metric``, ``--position``): text -> `circuits.metrics`.

``--metric``:

* ``next_token``: mean log-prob of each next token of the prompt (at the ``--position`` s, if given);
* ``logprob:TOK``: log-prob of TOK; ``logit_diff:A,B``: logit of A minus logit of B;
* ``prob:T1,T2,...``: the probability mass of the tokens;
* ``expected:T1,T2,...``: the expected numerical answer over number tokens, each valued by its
  text (``#id=VALUE`` for a token given by id), renormalised over those tokens;
* ``jsonl``: per prompt, ``logit_diff(target, foil)`` with a foil in the record, else
  ``logprob(target)``;
* ``py:FILE.py:FUNC``: a user function ``FUNC(logits) -> [b]`` or ``FUNC(logits, rows) -> [b]``
  (`circuits.metrics.custom`).

A token is written as text (it must be one token) or as ``#id``. ``--position``: ``-1`` (the last,
default), an index, a comma list (``3,5``: averaged) or ``all``; a JSON record's ``position``
field sets that prompt's answer position (all records need one).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mechscope.circuits import metrics as M

SPECS = "next_token | logprob:TOK | logit_diff:A,B | prob:T,T,.. | expected:T,T,.. | jsonl | py:FILE.py:FUNC"


def token_id(model: Any, text: str) -> int:
    if text.startswith("#") and text[1:].isdigit():
        return int(text[1:])
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens {ids}; give one token (or '#id')")
    return ids[0]


def parse_position(spec: "str | int | None") -> M.Positions:
    """``--position``: ``-1`` / an index / ``3,5`` / ``all``."""
    if spec is None:
        return -1
    if isinstance(spec, int):
        return spec
    text = spec.strip()
    if text == "all":
        return "all"
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--position {spec!r}: give an index (-1 is the last token), a comma list "
                         f"of indices (3,5) or 'all'") from None
    return parts[0] if len(parts) == 1 else parts


def _record_positions(recs: Sequence[dict[str, Any]]) -> torch.Tensor | None:
    has = ["position" in r for r in recs]
    if not any(has):
        return None
    if not all(has):
        raise ValueError("either every prompt record has a 'position' (its answer position) or none has")
    return torch.tensor([int(r["position"]) for r in recs])


def _number(model: Any, text: str) -> tuple[int, float]:
    tok, _, value = text.partition("=")
    tid = token_id(model, tok)
    src = value or (tok if not tok.startswith("#") else "")
    try:
        return tid, float(src)
    except ValueError:
        raise ValueError(f"expected: number token {text!r} has no numerical value; write it as its "
                         f"number ('7') or as '#id=VALUE'") from None


def _user_function(spec: str) -> M.Metric:
    path, _, name = spec.rpartition(":")
    if not path or not name or not Path(path).is_file():
        raise ValueError(f"metric 'py:{spec}': give an existing Python file and a function, "
                         f"e.g. py:my_metric.py:metric")
    module_spec = importlib.util.spec_from_file_location(f"mechscope_user_metric_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # the user's own code, named on the command line
    if not callable(getattr(module, name, None)):
        raise ValueError(f"metric 'py:{spec}': {path} defines no function {name!r}")
    return M.custom(getattr(module, name), name)


def make_metric(model: Any, spec: str, tokens: torch.Tensor, recs: Sequence[dict[str, Any]],
                position: "str | int | None" = None) -> M.Metric:
    """A metric from a CLI spec (module doc) for the prompts ``tokens`` (records ``recs``)."""
    b = tokens.shape[0]
    pos = _record_positions(recs)
    pos = parse_position(position) if pos is None else pos
    kind, _, arg = spec.partition(":")
    if kind == "next_token":
        if position is None and not isinstance(pos, torch.Tensor):
            return M.next_token_logprob(tokens)
        mask = torch.zeros(tokens.shape, dtype=torch.bool)
        at = M.at(torch.arange(tokens.shape[1], dtype=torch.float32).expand(b, -1)[..., None], pos)[..., 0].long()
        for row, ps in enumerate(at.tolist()):
            for p in ps:
                if p + 1 < tokens.shape[1]:
                    mask[row, p + 1] = True
        return M.next_token_logprob(tokens, mask)
    if kind == "logprob" and arg:
        return M.logprob(torch.full((b,), token_id(model, arg)), pos)
    if kind == "logit_diff" and arg.count(",") == 1:
        a, c = arg.split(",")
        return M.logit_diff(torch.full((b,), token_id(model, a)), torch.full((b,), token_id(model, c)), pos)
    if kind == "prob" and arg:
        return M.prob_mass([token_id(model, t) for t in arg.split(",")], pos)
    if kind == "expected" and arg:
        ids, values = zip(*(_number(model, t) for t in arg.split(",")))
        return M.expected_value(list(ids), list(values), pos)
    if kind == "py" and arg:
        return _user_function(arg)
    if kind == "jsonl":
        if any("target" not in r for r in recs):
            raise ValueError("metric 'jsonl' needs a 'target' in every prompt record")
        target = torch.tensor([token_id(model, r["target"]) for r in recs])
        if all("foil" in r for r in recs):
            return M.logit_diff(target, torch.tensor([token_id(model, r["foil"]) for r in recs]), pos)
        return M.logprob(target, pos)
    raise ValueError(f"unknown metric {spec!r}; valid: {SPECS}")
