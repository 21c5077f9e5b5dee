"""Checks of the attention-SVD decomposition (`mechscope.circuits.attention_svd`, whose module doc
carries the maths; Franco & Crovella 2024, arXiv:2410.00340).

* `ReconstructionCheck` — the "projection check" of the reference code, which verifies that the
  SVD terms add up to the attention score: over decomposed firings, the worst relative error of
  the terms against the model's own score, of the score of the inputs projected on the sparse
  signal's singular subspaces against the signal, and of the query / key / value splits.
* `projection_check` — the causal check: projecting the signal's singular subspace out of an
  upstream head's output, in a real forward pass, should lower the downstream score more than
  projecting out random subspaces of the same dimension.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechscope.circuits.attention_svd import (FiringDecomposition, activations, check_supported,
                                              decompose_firing, qk_svd)
from mechscope.circuits.node_ids import head_label
from mechscope.interp.capture import hooks_for
from mechscope.interp.models import Model
from mechscope.records import checked_fields

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike


# -- the reconstruction check -------------------------------------------------------------------
@dataclass(frozen=True)
class ReconstructionCheck:
    """The projection check over decomposed firings (module doc): the worst relative error
    (``|got - want| / (1 + |want|)``) of (1) the SVD terms against the model's score, (2) the
    score of the inputs projected on the signal's singular subspaces against the signal, (3) the
    query / key / value splits against what they split; ``components``: mean number of singular
    components in the sparse signal (of ``rank``); ``worst``: the firing with the largest error."""

    n_firings: int = 0
    score_error: float = 0.0
    sparse_error: float = 0.0
    split_error: float = 0.0
    components: float = 0.0
    rank: int = 0
    worst: str = ""
    tolerance: float = 1e-3

    @classmethod
    def of(cls, firings: "list[FiringDecomposition]", tolerance: float = 1e-3) -> "ReconstructionCheck":
        if not firings:
            return cls(tolerance=tolerance)
        errs = [fd.errors for fd in firings]
        worst = max(range(len(firings)), key=lambda k: max(errs[k]))
        fd = firings[worst]
        return cls(len(firings), *(max(e[k] for e in errs) for k in range(3)),
                   sum(int(f.signal.sum()) for f in firings) / len(firings), int(fd.terms.numel()),
                   f"{head_label(fd.layer, fd.head)} {fd.dst}->{fd.src}", tolerance)

    @classmethod
    def combine(cls, checks: "list[ReconstructionCheck]") -> "ReconstructionCheck":
        """One check over the firings of several (per-prompt) checks."""
        used = [c for c in checks if c.n_firings]
        if not used:
            return cls(tolerance=checks[0].tolerance if checks else 1e-3)
        n = sum(c.n_firings for c in used)
        worst = max(used, key=lambda c: c.max_error)
        return cls(n, *(max(getattr(c, f) for c in used) for f in ("score_error", "sparse_error", "split_error")),
                   sum(c.components * c.n_firings for c in used) / n, max(c.rank for c in used),
                   worst.worst, max(c.tolerance for c in used))

    @property
    def max_error(self) -> float:
        return max(self.score_error, self.sparse_error, self.split_error)

    @property
    def ok(self) -> bool:
        return self.max_error <= self.tolerance

    def require(self) -> "ReconstructionCheck":
        """Raise a ValueError that says what failed unless every error is within tolerance."""
        if self.ok:
            return self
        what = max((("the SVD terms do not add up to the model's attention score", self.score_error),
                    ("the score of the inputs projected on the sparse signal's singular subspaces is "
                     "not the signal", self.sparse_error),
                    ("the upstream parts do not add up to what they split", self.split_error)),
                   key=lambda t: t[1])
        raise ValueError(
            f"attention-SVD projection check failed at {self.worst}: {what[0]} (relative error "
            f"{what[1]:.3g} > tolerance {self.tolerance:g}); this model's attention is not the "
            f"bilinear form the decomposition assumes (soft-capped scores, ALiBi or other score "
            f"modifications, hooks that edit activations) or its numerics are too coarse (use "
            f"float32 or float64); the graph would be wrong, so none was written")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: "dict[str, Any]") -> "ReconstructionCheck":
        """The check from `to_dict` (a graph's ``meta.details["check"]``)."""
        return cls(**checked_fields(cls, data, "attention-SVD check"))

    def summary(self) -> str:
        return (f"projection check over {self.n_firings} firings: SVD terms reproduce the model's "
                f"scores to {self.score_error:.1e}, the sparse-signal projection to {self.sparse_error:.1e}, "
                f"the q/k/v splits to {self.split_error:.1e} (relative; tolerance {self.tolerance:g}; "
                f"{'ok' if self.ok else 'FAILED at ' + self.worst}); the sparse signal uses "
                f"{self.components:.1f} of {self.rank} singular components on average")


# -- causal check -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProjectionCheck:
    """Drop of the downstream score when a subspace is projected out of an upstream output."""

    score: float
    dim: int
    drop_selected: float
    drop_random: Float[Tensor, "n_random"]

    @property
    def beats_random(self) -> float:
        """Fraction of random subspaces whose drop is smaller than the selected one's."""
        return float((self.drop_random < self.drop_selected).float().mean())


def projection_check(model: "ModelLike", tokens: Int[Tensor, "pos"], layer: int, head: int, dst: int, src: int,
                     upstream: tuple[int, int], side: str = "key", n_random: int = 16, seed: int = 0,
                     share: float | None = 1.0) -> ProjectionCheck:
    """Project the firing's signal subspace (``side`` directions) out of upstream head
    ``(l, h)``'s output at ``src`` (key side) or ``dst`` (query side) and re-run the model."""
    model = Model.wrap(model)
    check_supported(model)
    l_up, h_up = upstream
    if not l_up < layer:
        raise ValueError(f"upstream head {head_label(l_up, h_up)} must be in an earlier layer than L{layer}")
    dec = qk_svd(model, layer, head)
    fd = decompose_firing(model, activations(model, tokens, layer), dec, dst, src, share)
    basis = torch.linalg.qr(dec.directions(side)[fd.signal].T)[0]
    gen = torch.Generator().manual_seed(seed)
    at = src if side == "key" else dst
    run = lambda b: _score_with_projection(model, tokens, layer, head, dst, src, l_up, h_up, at, b)  # noqa: E731
    base = run(None)
    rand = [run(torch.linalg.qr(torch.randn(basis.shape, generator=gen, dtype=basis.dtype).to(basis.device))[0])
            for _ in range(n_random)]
    return ProjectionCheck(base, basis.shape[1], base - run(basis), base - torch.tensor(rand))


def _score_with_projection(model: "Model", tokens: Tensor, layer: int, head: int, dst: int, src: int,
                           l_up: int, h_up: int, at: int, basis: Tensor | None) -> float:
    store: dict[str, Any] = {}

    def project(out: Tensor) -> Tensor | None:
        if basis is None:
            return None  # the same hook path as the intervened runs, unchanged
        out = out.clone()
        o = out[:, at]
        out[:, at] = o - (o @ basis) @ basis.T
        return out

    def save(scores: Tensor) -> None:
        store["s"] = float(scores[0, dst, src])

    sites = {model.site(f"L{l_up}.result.H{h_up}"): project, model.site(f"L{layer}.scores.H{head}"): save}
    with torch.no_grad(), hooks_for(model, sites):
        model(tokens.view(1, -1).to(model.device), stop_at_layer=layer + 1)
    return store["s"]
