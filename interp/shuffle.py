"""A seeded shuffle buffer over any `ActivationSource`: rows mixed across batches and shards.

A cache read shard by shard (even with shard order and rows within a shard permuted) yields
batches whose rows all come from one shard: rows of a few thousand neighbouring windows. This
buffer holds ``C`` rows drawn from the source and emits batches of ``B`` rows chosen uniformly
without replacement with a seeded generator, so each batch mixes rows of about ``C / rows_per_shard``
shards (SAELens' mixing buffer; Bricken et al. 2023). The holes a draw leaves are closed by the
unselected rows of the last ``B`` slots, so a draw costs ``O(B)``, not ``O(C)`` (as in
`mechscope.interp.stream.ActivationStream`).

Exact resumption: ``state_dict()`` holds the source's own state (taken after the last batch
pulled), the rows in the buffer, the rows pulled but not yet buffered, and the generator state;
the rest is deterministic, so a restored buffer yields exactly the batches the original would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from mechscope.interp.activations import ActivationBatch
from mechscope.interp.stream import ActivationSource, StreamStateError, batch_from_state, batch_to_state

STATE_VERSION = 1


class ShuffleBuffer:
    """Batches of ``batch_tokens`` rows drawn from a ``capacity``-row buffer over ``source``."""

    def __init__(self, source: ActivationSource, capacity: int, batch_tokens: int, seed: int = 0,
                 drop_last: bool = False, device: "torch.device | str | None" = None) -> None:
        if batch_tokens < 1 or capacity < batch_tokens:
            raise ValueError(f"shuffle buffer capacity ({capacity} rows) must be >= batch_tokens "
                             f"({batch_tokens}) >= 1")
        self.source, self.capacity, self.batch_tokens = source, int(capacity), int(batch_tokens)
        self.seed, self.drop_last = int(seed), drop_last
        self.device = torch.device(device) if device is not None else getattr(source, "device", torch.device("cpu"))
        self.sites, self.d = source.sites, source.d
        self._reset()

    def _reset(self) -> None:
        self._rng = torch.Generator().manual_seed(self.seed)
        self._buf: ActivationBatch | None = None
        self._fill = 0
        self._stage: ActivationBatch | None = None  # rows pulled beyond the buffer's capacity
        self._it: Iterator[ActivationBatch] | None = None
        self._exhausted = False
        self.batches_yielded = 0

    def _pull(self) -> bool:
        if self._exhausted:
            return False
        if self._it is None:
            self._it = iter(self.source)
        batch = next(self._it, None)
        if batch is None:
            self._exhausted = True
            return False
        batch = batch.to(self.device)
        self._stage = batch if self._stage is None else ActivationBatch.concat([self._stage, batch])
        return True

    def _alloc(self, like: ActivationBatch) -> None:
        c = self.capacity
        self._buf = ActivationBatch(
            {s: torch.empty((c, a.shape[1]), dtype=a.dtype, device=self.device) for s, a in like.acts.items()},
            *(torch.empty(c, dtype=torch.int64, device=self.device) for _ in range(3)))

    def _write(self, at: "torch.Tensor | slice", rows: ActivationBatch) -> None:
        for s in self.sites:
            self._buf.acts[s][at] = rows.acts[s]
        for k in ("token_ids", "seq_index", "positions"):
            getattr(self._buf, k)[at] = getattr(rows, k)

    def _top_up(self) -> None:
        while self._fill < self.capacity:
            if self._stage is None and not self._pull():
                return
            n = min(len(self._stage), self.capacity - self._fill)
            rows, rest = self._stage.index(slice(0, n)), self._stage.index(slice(n, None))
            self._stage = rest if len(rest) else None
            if self._buf is None:
                self._alloc(rows)
            self._write(slice(self._fill, self._fill + n), rows)
            self._fill += n

    def __iter__(self) -> Iterator[ActivationBatch]:
        while True:
            self._top_up()
            f = self._fill
            n = min(f, self.batch_tokens)
            if n == 0 or (n < self.batch_tokens and self.drop_last):
                return
            idx = torch.randperm(f, generator=self._rng)[:n]
            out = self._buf.index(idx.to(self.device))
            chosen = torch.zeros(f, dtype=torch.bool)
            chosen[idx] = True
            holes = torch.sort(idx[idx < f - n]).values
            tail = torch.arange(f - n, f)
            if len(holes):
                self._write(holes.to(self.device), self._buf.index(tail[~chosen[tail]].to(self.device)))
            self._fill = f - n
            self.batches_yielded += 1
            yield out

    def share_work(self, world: "tuple[int, int]") -> None:
        """Data parallel: the source computes or reads only this rank's share (see the source's
        ``share_work``); the buffer, identical on every rank, needs nothing else."""
        if not hasattr(self.source, "share_work"):
            raise ValueError(f"{type(self.source).__name__} cannot share its work between processes")
        self.source.share_work(world)

    def config(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "batch_tokens": self.batch_tokens, "seed": self.seed,
                "drop_last": self.drop_last, "sites": [str(s) for s in self.sites]}

    def state_dict(self) -> dict[str, Any]:
        buf = None if self._buf is None else self._buf.index(slice(0, self._fill))
        return {"kind": "shuffle_buffer", "version": STATE_VERSION, "config": self.config(),
                "source": self.source.state_dict(), "rng": self._rng.get_state(),
                "exhausted": self._exhausted, "batches_yielded": self.batches_yielded,
                "buffer": batch_to_state(buf), "stage": batch_to_state(self._stage)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("kind") != "shuffle_buffer":
            raise StreamStateError("not a ShuffleBuffer state dict")
        if state.get("version") != STATE_VERSION or state["config"] != self.config():
            raise StreamStateError(f"state was saved by a shuffle buffer with another config or version: "
                                   f"saved {state.get('config')}, this buffer {self.config()}")
        self.source.load_state_dict(state["source"])
        self._reset()
        self._rng.set_state(state["rng"])
        self._exhausted, self.batches_yielded = bool(state["exhausted"]), int(state["batches_yielded"])
        self._stage = batch_from_state(state["stage"], self.sites, self.device)
        buf = batch_from_state(state["buffer"], self.sites, self.device)
        if buf is not None and len(buf):
            self._stage = buf if self._stage is None else ActivationBatch.concat([buf, self._stage])
            self._top_up_from_stage_only(len(buf))

    def _top_up_from_stage_only(self, n: int) -> None:
        """Put the first ``n`` staged rows (the saved buffer) back into the buffer, pulling nothing."""
        rows, rest = self._stage.index(slice(0, n)), self._stage.index(slice(n, None))
        self._stage = rest if len(rest) else None
        self._alloc(rows)
        self._write(slice(0, n), rows)
        self._fill = n
