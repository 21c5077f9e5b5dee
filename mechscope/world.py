"""This process among the processes ``torchrun`` started, and the one collective the data
readers need: tensors made on one rank, sent to every rank.

A data-parallel job cuts the work of reading its data into ``W`` disjoint shares: rank ``r``
runs the model on windows ``r m .. (r+1) m - 1`` of every ``W m`` windows (``m`` =
``model_batch_size``), or reads shard ``p + r`` of every ``W`` shards of a cache, and
broadcasts what it made; every rank receives the shares in rank order, so every rank holds
exactly the rows one process would have read (the same global batches, at any ``W``), while each
rank ran 1/W of the forward passes and read 1/W of the files. The readers know every share's
size in advance (from the token windows, or the cache manifest), so nothing but the rows is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor


class World(NamedTuple):
    """This process's rank among ``size`` processes (``World(0, 1)``: not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def broadcast_from(owner: int, tensors: Sequence[Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with the owner's (same shapes and dtypes on every rank:
    the callers allocate them from sizes every rank knows). Empty tensors are skipped."""
    import torch.distributed as dist

    for t in tensors:
        if t.numel():
            dist.broadcast(t, src=owner)
