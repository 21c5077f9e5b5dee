"""`SparseCode`: the k active latents of each row of a dictionary code.

Returned by every `Dictionary.encode` and by the kernels (`topk_encode`). Row ``r`` of the
dense code is ``sum_j values[r, j] * e_{indices[r, j]}``; entries with ``values == 0`` are
inactive (used to pad rows with fewer than k active latents, e.g. matching pursuit stopped
early or a ReLU code).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


class SparseCode(NamedTuple):
    """values [n, k] and indices [n, k] (int64) of the k selected latents per row."""

    values: Float[Tensor, "n k"]
    indices: Int[Tensor, "n k"]

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    def dense(self, d_dict: int) -> Float[Tensor, "n d_dict"]:
        """Scatter into a dense [n, d_dict] matrix (duplicate indices add up)."""
        if self.indices.numel() and int(self.indices.max()) >= d_dict:
            raise ValueError(f"index {int(self.indices.max())} out of range for d_dict={d_dict}")
        out = self.values.new_zeros(*self.values.shape[:-1], d_dict)
        return out.scatter_add(-1, self.indices, self.values)

    def l0(self) -> Float[Tensor, "n"]:
        """Number of non-zero entries per row."""
        return (self.values != 0).sum(-1).to(self.values.dtype)

    @staticmethod
    def from_dense(x: Float[Tensor, "n d"], k: int | None = None) -> "SparseCode":
        """The k largest-magnitude entries per row (all non-zeros' width if k is None)."""
        if k is None:
            k = max(int((x != 0).sum(-1).max()), 1) if x.numel() else 1
        k = min(k, x.shape[-1])
        idx = x.abs().topk(k, dim=-1).indices
        return SparseCode(x.gather(-1, idx), idx)
