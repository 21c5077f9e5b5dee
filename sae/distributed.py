"""Training on several processes with ``torch.distributed`` (launched by ``torchrun``).

Two modes, chosen by the number of dictionaries:

* **One dictionary: data parallel.** Each rank reads a disjoint share of the data: a model
  stream runs the model on rank ``r``'s ``model_batch_size`` windows of every ``W *
  model_batch_size``, a cache reader reads shard ``r`` of every ``W`` shards, and each rank
  broadcasts what it made (`mechscope.world`, the sources' ``share_work``), so every rank holds
  the global batch one process would draw (same rows, same shuffle) after 1/W of the forward
  passes and file reads. The global batch of ``B`` rows is cut into ``W`` equal contiguous
  slices, rank ``r`` trains on slice ``r`` (`RankSlice`), and every quantity that depends on
  the whole batch is reduced so that each rank takes exactly the step one process would take on
  the global batch:

  - gradients: every loss here is a mean over rows, so ``∇ mean_B = (1/W) Σ_r ∇ mean_{B/W, r}``:
    an all-reduce sum of the gradients divided by ``W`` (what DDP does, without its module
    wrapper, because the trainer calls the architecture's ``loss``, not ``forward``);
  - the data initialisation (activation scales, geometric-median ``b_dec``): computed on the
    all-gathered first global batch;
  - dead-latent counters: the fired masks are OR-ed (all-reduce max) and the row counts summed;
  - logged metrics: loss, L0, FVU and dead fraction averaged over ranks.

  Weights start equal on every rank (seeded initialisation) and stay equal because every rank
  applies the same reduced update. Rank 0 writes checkpoints, metrics and the final folders.
  Nothing in the checkpoint depends on ``W`` (the stream position is a position in global
  batches, the weights and optimiser state are the same on every rank), so a run resumes with
  any number of processes that divides ``B``, one process included. Architectures
  whose training hook draws on the local batch (codebook code replacement) are refused; the
  per-row aux-k normaliser of top-k uses the rank's slice (exact while no latent is dead).

* **A sweep: sharded runs.** Run ``i`` of the sweep is trained by rank ``i mod W``; each rank reads
  the whole stream (the same batches in the same order), writes its own runs' folders and its own
  checkpoint ``checkpoint.rank{r}.safetensors``, so each run ends exactly where the sequential
  sweep ends it. Rank files resume only with the same number of processes (refused otherwise,
  `check_checkpoint_layout`).

The gloo backend runs all of this on CPUs (the tests); NCCL on GPUs, one device per local rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from mechscope.world import World, current_world

__all__ = ["World", "current_world", "init_from_env", "barrier", "RankSlice", "DataParallel"]


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
    rows ``[r B/W, (r+1) B/W)``. Every rank holds the same global batches, so the source's
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


def check_checkpoint_layout(out: "os.PathLike[str] | str", world: World, sharded: bool) -> None:
    """Before resuming in ``out``: a sharded sweep's rank checkpoints resume only with as many
    processes as wrote them, and a single checkpoint (one process or data parallel, any number
    of processes) is not resumed as a sharded sweep or the other way round."""
    from pathlib import Path

    out = Path(out)
    ranks = sorted(out.glob("checkpoint.rank*.safetensors"))
    single = (out / "checkpoint.safetensors").exists()
    how = f"torchrun --nproc_per_node {len(ranks)}" if ranks else "one process or data-parallel torchrun"
    if sharded and single:
        raise ValueError(f"{out} holds the checkpoint of a run in one process (or data parallel) and this "
                         f"sweep is sharded over {world.size} processes; resume it in one process (python -m "
                         "mechscope.apps train ...), or start over with --no-resume / another --out")
    if ranks and (not sharded or len(ranks) != world.size):
        now = f"sharded over {world.size} processes" if sharded else (
            "data parallel" if world.distributed else "in one process")
        raise ValueError(f"{out} holds the checkpoints of a sweep sharded over {len(ranks)} processes "
                         f"({', '.join(p.name for p in ranks)}) and this run is {now}; resume with {how}, "
                         "or start over with --no-resume / another --out")


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
