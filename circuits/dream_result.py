"""What a dreaming run returns: the Pareto frontier of (activation, cross-entropy) as typed values.

A prompt ``a`` dominates ``b`` when ``f(a) >= f(b)`` and ``CE(a) <= CE(b)`` with one of them
strict; `Frontier` keeps the non-dominated prompts among everything a run evaluated, ordered by
cross-entropy (so activation rises strictly along it). For a fluency weight ``λ`` the best prompt
``argmax f - λ CE`` over everything evaluated is always on it, and its cross-entropy falls (weakly)
as ``λ`` grows: for ``λ1 < λ2`` with optima ``a1, a2``, adding the two optimality inequalities
gives ``(λ2 - λ1)(CE(a1) - CE(a2)) >= 0``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope import files


@dataclass(frozen=True)
class DreamMember:
    """One dreamed prompt."""

    tokens: tuple[int, ...]
    text: str
    str_tokens: tuple[str, ...]
    activation: float
    cross_entropy: float
    per_token: tuple[float, ...]  # the target at every prompt position
    lam: float | None = None  # the population's λ that selects it (the largest), or None


@dataclass(frozen=True)
class DreamResult:
    """The frontier (by cross-entropy, ascending) and the best prompt for each member's λ."""

    target: str
    model: str
    config: dict[str, Any]
    lambdas: tuple[float, ...]
    frontier: tuple[DreamMember, ...]
    members: tuple[DreamMember, ...]
    evaluated: int
    seconds: float

    def best(self, max_cross_entropy: float | None = None) -> DreamMember:
        """The frontier's highest activation, among prompts with cross-entropy <= the bound."""
        ok = [m for m in self.frontier if max_cross_entropy is None or m.cross_entropy <= max_cross_entropy]
        if not ok:
            lowest = self.frontier[0].cross_entropy
            raise ValueError(f"no dreamed prompt has cross-entropy <= {max_cross_entropy}; "
                             f"the most fluent one has {lowest:.3f}")
        return max(ok, key=lambda m: m.activation)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["frontier"] = [_member_json(m) for m in self.frontier]
        out["members"] = [_member_json(m) for m in self.members]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "DreamResult":
        def member(d: dict[str, Any]) -> DreamMember:
            return DreamMember(tuple(d["tokens"]), d["text"], tuple(d["str_tokens"]), d["activation"],
                               d["cross_entropy"], tuple(math.nan if v is None else v for v in d["per_token"]),
                               d.get("lam"))
        return cls(obj["target"], obj["model"], dict(obj["config"]), tuple(obj["lambdas"]),
                   tuple(member(d) for d in obj["frontier"]), tuple(member(d) for d in obj["members"]),
                   int(obj["evaluated"]), float(obj["seconds"]))

    def save(self, path: "str | Path") -> Path:
        """Write ``to_json()`` atomically (strict JSON)."""
        return files.write_json(path, self.to_json(), indent=1)


def _member_json(m: DreamMember) -> dict[str, Any]:
    d = asdict(m)
    d["per_token"] = [None if not math.isfinite(v) else v for v in m.per_token]
    return d


class Frontier:
    """The non-dominated prompts among everything added (tokens are trimmed to their length)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, float, tuple[int, ...], tuple[float, ...]]] = []
        self.evaluated = 0

    def add(self, ids: Tensor, lengths: Tensor, act: Tensor, ce: Tensor, per_token: Tensor) -> None:
        self.evaluated += int(ids.shape[0])
        rows = [(float(a), float(c), tuple(ids[i, :n].tolist()), tuple(per_token[i, :n].tolist()))
                for i, (a, c, n) in enumerate(zip(act.tolist(), ce.tolist(), lengths.tolist()))
                if math.isfinite(a) and math.isfinite(c)]
        seen: set[tuple[int, ...]] = set()
        merged = []
        for row in self.items + rows:  # the first copy of a prompt wins (keeps runs reproducible)
            if row[2] not in seen:
                seen.add(row[2])
                merged.append(row)
        merged.sort(key=lambda r: (r[1], -r[0]))  # stable: ties keep their order
        keep, best = [], -math.inf
        for row in merged:
            if row[0] > best:
                keep.append(row)
                best = row[0]
        self.items = keep

    def best_activation(self) -> float:
        return self.items[-1][0] if self.items else -math.inf

    def choose(self, lambdas: Tensor) -> list[int]:
        """Index into ``items`` of ``argmax f - λ CE`` for each λ (ties: the more fluent)."""
        act = torch.tensor([r[0] for r in self.items], dtype=torch.float64)
        ce = torch.tensor([r[1] for r in self.items], dtype=torch.float64)
        return (act[None] - lambdas.double()[:, None] * ce[None]).argmax(1).tolist()

    def result(self, model: Any, target: str, config: dict[str, Any], lambdas: Tensor,
               seconds: float) -> DreamResult:
        chosen = self.choose(lambdas)
        lam_of: dict[int, float] = {}
        for lam, j in zip(lambdas.tolist(), chosen):
            lam_of[j] = max(lam, lam_of.get(j, -math.inf))

        def member(j: int, lam: float | None) -> DreamMember:
            a, c, toks, per = self.items[j]
            return DreamMember(toks, _decode(model, toks), tuple(model.to_str_tokens(list(toks))),
                               a, c, per, lam)

        frontier = tuple(member(j, lam_of.get(j)) for j in range(len(self.items)))
        members = tuple(member(j, lam) for lam, j in zip(lambdas.tolist(), chosen))
        return DreamResult(target, model.name, config, tuple(lambdas.tolist()), frontier, members,
                           self.evaluated, round(seconds, 3))


def _decode(model: Any, tokens: tuple[int, ...]) -> str:
    tok = model.tokenizer
    if tok is None:
        return " ".join(f"<{t}>" for t in tokens)
    return tok.decode(list(tokens))
