"""`ActivationBatch`: rows of activations at one or more sites, with provenance.

Row ``r`` is the activation of token ``token_ids[r]`` at position ``positions[r]`` of context
window ``seq_index[r]`` of the token stream that produced it, so browsers can show context.
Every site's tensor has the same number of rows, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable, Mapping

import torch
from jaxtyping import Int
from torch import Tensor

from mechscope.interp.sites import Site


@dataclass(frozen=True)
class ActivationBatch:
    """``acts[site]`` is ``[n, d_site]``; provenance vectors are ``[n]`` int64."""

    acts: Mapping[Site, Tensor]
    token_ids: Int[Tensor, "n"]
    seq_index: Int[Tensor, "n"]
    positions: Int[Tensor, "n"]

    def __post_init__(self) -> None:
        n = self.token_ids.shape[0]
        for name in ("seq_index", "positions"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected ({n},)")
        for site, a in self.acts.items():
            if not isinstance(site, Site):
                raise TypeError(f"ActivationBatch keys must be Site values, got {site!r}")
            if a.shape[0] != n:
                raise ValueError(f"site {site} has {a.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return self.token_ids.shape[0]

    def __getitem__(self, site: "Site | str") -> Tensor:
        site = Site.parse(site)
        try:
            return self.acts[site]
        except KeyError:
            raise KeyError(f"site {site} not in batch; sites: {', '.join(map(str, self.sites))}") from None

    @property
    def sites(self) -> tuple[Site, ...]:
        return tuple(self.acts)

    def index(self, idx: Tensor | slice) -> "ActivationBatch":
        """Rows ``idx`` of every field (a permutation, a mask or a slice)."""
        return ActivationBatch(
            {s: a[idx] for s, a in self.acts.items()},
            self.token_ids[idx], self.seq_index[idx], self.positions[idx],
        )

    def to(self, device: torch.device | str) -> "ActivationBatch":
        return ActivationBatch(
            {s: a.to(device) for s, a in self.acts.items()},
            self.token_ids.to(device), self.seq_index.to(device), self.positions.to(device),
        )

    @staticmethod
    def concat(batches: Iterable["ActivationBatch"]) -> "ActivationBatch":
        batches = list(batches)
        if not batches:
            raise ValueError("concat needs at least one batch")
        sites = batches[0].sites
        if any(b.sites != sites for b in batches):
            raise ValueError("cannot concatenate batches with different sites")
        return ActivationBatch(
            {s: torch.cat([b.acts[s] for b in batches]) for s in sites},
            torch.cat([b.token_ids for b in batches]),
            torch.cat([b.seq_index for b in batches]),
            torch.cat([b.positions for b in batches]),
        )
