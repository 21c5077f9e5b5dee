"""Synthetic activation sources with planted ground-truth features (for tests and demos).

`PlantedSource`: ``x = Σ_{i ∈ A} a_i g_i`` with F random unit directions g_i in R^d, each feature
active independently with probability ``p = mean_active / F`` and magnitude ``a_i`` drawn from
``magnitude`` ("uniform": U[0.5, 1.5], "const": 1). (Elhage et al. 2022, "Toy Models of
Superposition"; the standard SAE recovery benchmark.)

`HierarchicalSource` (Costa et al. 2025, MP-SAE, §synthetic): P parent directions, each with C
children. A parent fires with probability p; when it does, exactly one of its children fires
(children are mutually exclusive), so ``x = a_p g_p + a_c h_{p,c}``. Child directions are
``h = cos·g_p + sin·u`` with u a random unit vector orthogonal to g_p: with large
``child_cosine`` the children of a parent are strongly correlated with it and with each other,
the regime where one-shot encoders confuse them.

`hierarchy_recovery` measures what a dictionary learned of a hierarchical source (MMCS of parents
and children, absorption rate).

`PairedSource` turns any source into (x_in, x_out = x_in Mᵀ + c) pairs: two synthetic "sites"
joined by a known linear map, the ground truth for transcoders.

Every source is a deterministic function of (seed, batch index): batch i is generated from its
own generator, so ``state_dict() = {"position": i}`` is all an exact resume needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor


def _unit_rows(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class _IndexedSource:
    """Iterable of batches ``batch(0), batch(1), ...`` (endless unless n_batches is set)."""

    def __init__(self, batch_size: int, seed: int, n_batches: int | None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.batch_size, self.seed, self.n_batches = batch_size, seed, n_batches
        self.position = 0

    def batch(self, i: int) -> Any:
        raise NotImplementedError

    def _gen(self, i: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + i + 1)

    def __iter__(self) -> Iterator[Any]:
        while self.n_batches is None or self.position < self.n_batches:
            b = self.batch(self.position)
            self.position += 1
            yield b

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class PlantedSource(_IndexedSource):
    def __init__(self, d: int, n_features: int, batch_size: int = 256, mean_active: float | int = 3.0,
                 magnitude: str = "uniform", seed: int = 0, n_batches: int | None = None) -> None:
        super().__init__(batch_size, seed, n_batches)
        if magnitude not in ("uniform", "const"):
            raise ValueError(f"magnitude must be 'uniform' or 'const', got {magnitude!r}")
        if not 0 < mean_active <= n_features:
            raise ValueError(f"mean_active must be in (0, n_features={n_features}], got {mean_active}")
        self.d, self.n_features, self.mean_active, self.magnitude = d, n_features, mean_active, magnitude
        g = torch.Generator().manual_seed(seed)
        self.features: Float[Tensor, "F d"] = _unit_rows(torch.randn(n_features, d, generator=g))

    def coefficients(self, i: int) -> Float[Tensor, "n F"]:
        g = self._gen(i)
        on = torch.rand(self.batch_size, self.n_features, generator=g) < self.mean_active / self.n_features
        mag = 0.5 + torch.rand(self.batch_size, self.n_features, generator=g)
        return on * (mag if self.magnitude == "uniform" else 1.0)

    def batch(self, i: int) -> Float[Tensor, "n d"]:
        return self.coefficients(i) @ self.features


class HierarchicalSource(_IndexedSource):
    def __init__(self, d: int, n_parents: int, n_children: int, batch_size: int = 256,
                 p_parent: float | int = 0.1, child_cosine: float | int = 0.8, seed: int = 0,
                 n_batches: int | None = None) -> None:
        super().__init__(batch_size, seed, n_batches)
        if not 0 <= child_cosine < 1:
            raise ValueError(f"child_cosine must be in [0, 1), got {child_cosine}")
        if n_children < 2:
            raise ValueError(f"n_children must be >= 2 (mutually exclusive children), got {n_children}")
        self.d, self.n_parents, self.n_children, self.p_parent = d, n_parents, n_children, p_parent
        g = torch.Generator().manual_seed(seed)
        self.parents = _unit_rows(torch.randn(n_parents, d, generator=g))
        u = torch.randn(n_parents, n_children, d, generator=g)
        u = _unit_rows(u - (u * self.parents[:, None]).sum(-1, keepdim=True) * self.parents[:, None])
        s = (1 - child_cosine**2) ** 0.5
        self.children = child_cosine * self.parents[:, None] + s * u  # [P, C, d]

    @property
    def features(self) -> Float[Tensor, "F d"]:
        """Parents, then every child (parent-major): the ground-truth directions."""
        return torch.cat([self.parents, self.children.reshape(-1, self.d)])

    def coefficients(self, i: int) -> Float[Tensor, "n F"]:
        g = self._gen(i)
        n, P, C = self.batch_size, self.n_parents, self.n_children
        on = torch.rand(n, P, generator=g) < self.p_parent
        a_p = on * (0.5 + torch.rand(n, P, generator=g))
        child = torch.randint(0, C, (n, P), generator=g)
        a_c = torch.zeros(n, P, C).scatter_(2, child[..., None], (on * (0.5 + torch.rand(n, P, generator=g)))[..., None])
        return torch.cat([a_p, a_c.reshape(n, P * C)], 1)

    def batch(self, i: int) -> Float[Tensor, "n d"]:
        return self.coefficients(i) @ self.features


class PairedSource:
    """(x, x Mᵀ + c) pairs from a tensor-valued source; state passes through."""

    def __init__(self, source: _IndexedSource, M: Float[Tensor, "d_out d_in"],
                 c: Float[Tensor, "d_out"] | None = None) -> None:
        self.source, self.M = source, M
        self.c = c if c is not None else torch.zeros(M.shape[0])

    def __iter__(self):
        for x in self.source:
            yield x, x @ self.M.T + self.c

    def state_dict(self) -> dict[str, int]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.source.load_state_dict(state)


class HierarchyRecovery(NamedTuple):
    """How a dictionary recovers a `HierarchicalSource`: mean max cosine similarity of the parent
    and child directions with the dictionary's atoms, and the absorption rate."""

    parent_mmcs: float
    child_mmcs: float
    absorption_rate: float


@torch.no_grad()
def hierarchy_recovery(dictionary: Any, source: HierarchicalSource, n_batches: int = 4,
                       start: int = 10_000) -> HierarchyRecovery:
    """MMCS of parents / children, and absorption (Chanin et al. 2024, "A is for Absorption").

    Each parent's latent is the atom closest (cosine) to its direction. Its absorption rate is the
    fraction of rows where the parent is active but its latent is silent — the parent direction
    then rides on the child's latent, which has absorbed it. Averaged over parents, on batches
    ``start, start + 1, ...`` of the source (held out from training at the default).
    """
    atoms = dictionary.directions.detach().float()
    atoms = atoms / atoms.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos_p = source.parents @ atoms.T
    cos_c = source.children.reshape(-1, source.d) @ atoms.T
    parent_latent = cos_p.argmax(1)
    missed = active = torch.zeros(source.n_parents)
    for i in range(start, start + n_batches):
        coef = source.coefficients(i)
        on = coef[:, : source.n_parents] > 0
        fired = dictionary.encode(coef @ source.features).dense(atoms.shape[0])[:, parent_latent] != 0
        missed = missed + (on & ~fired).sum(0)
        active = active + on.sum(0)
    seen = active > 0
    rate = float((missed[seen] / active[seen]).mean()) if seen.any() else float("nan")
    return HierarchyRecovery(float(cos_p.max(1).values.mean()), float(cos_c.max(1).values.mean()), rate)
