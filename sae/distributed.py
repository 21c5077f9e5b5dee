"""Training on several processes with ``torch.distributed`` (launched by ``torchrun``).

Two modes, chosen by the number of dictionaries:

* **One dictionary: data parallel.** The global batch of ``B`` rows is cut into ``W`` equal
  contiguous slices, rank ``r`` trains on slice ``r`` (`RankSlice`), and every quantity that
  depends on the whole batch is reduced so that each rank takes exactly the step one process
  would take on the global batch:

  - gradients: every loss here is a mean over rows, so ``∇ mean_B = (1/W) Σ_r ∇ mean_{B/W, r}``:
    an all-reduce sum of the gradients divided by ``W`` (what DDP does, without its module
    wrapper, because the trainer calls the architecture's ``loss``, not ``forward``);
  - the data initialisation (activation scales, geometric-median ``b_dec``): computed on the
    all-gathered first global batch;
  - dead-latent counters: the fired masks are OR-ed (all-reduce max) and the row counts summed;
  - logged metrics: loss, L0, FVU and dead fraction averaged over ranks.

  Weights start equal on every rank (seeded initialisation) and stay equal because every rank
  applies the same reduced update. Rank 0 writes checkpoints, metrics and the final folders; a
  checkpoint records the world size and resuming with another one is refused. Architectures
  whose training hook draws on the local batch (codebook code replacement) are refused; the
  per-row aux-k normaliser of top-k uses the rank's slice (exact while no latent is dead).

* **A sweep: sharded runs.** Run ``i`` of the sweep is trained by rank ``i mod W``; each rank reads
  the whole stream (the same batches in the same order), writes its own runs' folders and its own
  checkpoint ``checkpoint.rank{r}.safetensors``, so each run ends exactly where the sequential
  sweep ends it.

The gloo backend runs all of this on CPUs (the tests); NCCL on GPUs, one device per local rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
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


def init_from_env(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR/PORT`` in the environment): gloo on CPUs, NCCL on CUDA with one device per
    local rank. Without torchrun (no ``WORLD_SIZE`` or 1), nothing happens."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current_world(), device


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


class RankSlice:
    """Rank ``r``'s contiguous slice of every batch of ``source`` (whose batches are global):
    rows ``[r B/W, (r+1) B/W)``. Every rank reads the same global batches, so the source's
    position (``state_dict``) is the same on every rank."""

    def __init__(self, source: Any, world: World) -> None:
        self.source, self.world = source, world
        for name in ("sites", "d", "device"):
            if hasattr(source, name):
                setattr(self, name, getattr(source, name))

    def __iter__(self) -> Iterator[Any]:
        r, w = self.world
        for batch in self.source:
            n = len(batch) if hasattr(batch, "index") else batch.shape[0]
            if n % w:
                raise ValueError(f"a global batch of {n} rows does not split evenly over {w} ranks; "
                                 f"make data.batch_tokens a multiple of the number of processes")
            part = slice(r * n // w, (r + 1) * n // w)
            yield batch.index(part) if hasattr(batch, "index") else batch[part]

    def state_dict(self) -> Any:
        return self.source.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.source.load_state_dict(state)


class DataParallel:
    """The reductions of one data-parallel dictionary (see the module docstring)."""

    def __init__(self, world: World) -> None:
        import torch.distributed as dist

        self.world, self.dist = world, dist

    def gather_rows(self, x: Tensor) -> Tensor:
        """The global batch, slices in rank order (every rank holds the same number of rows)."""
        parts = [torch.empty_like(x) for _ in range(self.world.size)]
        self.dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def average_grads(self, module: torch.nn.Module) -> None:
        for p in module.parameters():
            if p.grad is not None:
                self.dist.all_reduce(p.grad)
                p.grad /= self.world.size

    def fired(self, fired: Tensor, n: int) -> tuple[Tensor, int]:
        f = fired.to(torch.int32)
        self.dist.all_reduce(f, op=self.dist.ReduceOp.MAX)
        return f.bool(), n * self.world.size

    def mean(self, values: Tensor) -> Tensor:
        v = values.detach().float().clone()
        self.dist.all_reduce(v)
        return v / self.world.size
