"""Activation streams: model activations at sites as shuffled, resumable row batches.

An `ActivationStream` runs a model over the windows of a token stream (``model_batch_size``
windows per forward, stopping at the last block a site needs) and flattens every captured
``[batch, pos, ...]`` tensor to rows ``[batch * pos, d_site]``: one row per token, with its
provenance (token id, natural window index, position). Rows of special tokens (BOS, document
separators) are dropped with ``exclude_special``.

Sparse-dictionary training wants i.i.d. rows, but rows of one window are strongly correlated.
Rows therefore pass through a shuffle buffer of ``C`` rows (as in SAELens' activation store and
Bricken et al. 2023, "Towards Monosemanticity", which shuffle activations across many
contexts): the buffer is topped up to ``C`` rows, a batch of ``B`` rows is drawn uniformly
without replacement with a seeded generator, and the rows left behind close the holes (the
unselected rows of the last ``B`` slots move into the holes below them, so a draw costs
``O(B)``, not ``O(C)``). Each batch thus mixes rows of about ``C / n_ctx`` windows;
``C = 0`` keeps the natural order.

Data parallel (`share_work`, `mechscope.world`): rank ``r`` of ``W`` runs the model on windows
``[r m, (r+1) m)`` of every ``W m`` (``m = model_batch_size``), the ranks broadcast their rows,
and every rank stages the ``W`` shares in order: the row sequence one process computes, so the
buffer, the draws and the saved position are those of one process (and resume with any ``W``).

Exact resumption: ``state_dict()`` holds the token stream's position, the buffer rows, the rows
already computed but not yet in the buffer, and the generator state; everything downstream of
them is a deterministic function, so a stream restored from the state yields exactly the
batches the original would have yielded next.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from jaxtyping import Int
from torch import Tensor

from mechscope.interp.activations import ActivationBatch
from mechscope.interp.models import Model
from mechscope.interp.sites import Site
from mechscope.interp.tokens import TokenStream, check_resume_state

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

STATE_VERSION = 1


class StreamStateError(ValueError):
    """A state dict that does not belong to this stream (other sites, sizes or version)."""


@runtime_checkable
class ActivationSource(Protocol):
    """Anything that yields `ActivationBatch`es and can save and restore its position:
    `ActivationStream` (live model) and `mechscope.interp.cache.CachedActivations` (disk)."""

    sites: tuple[Site, ...]
    d: dict[Site, int]

    def __iter__(self) -> Iterator[ActivationBatch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------------------------------------
# rows from a forward pass
# ---------------------------------------------------------------------------------------------
def flatten_site(site: Site, act: Tensor) -> Tensor:
    """``[batch, pos, ...]`` -> ``[batch * pos, d]``; all-head patterns ``[b, h, q, k]`` become
    rows per query position with the heads' key rows concatenated."""
    if site.kind in ("pattern", "scores") and site.head is None:
        act = act.transpose(1, 2)
    return act.reshape(act.shape[0] * act.shape[1], -1)


def window_rows(
    model: "ModelLike",
    windows: Int[Tensor, "b n_ctx"],
    seq_index: Int[Tensor, "b"],
    sites: Iterable[Site],
    keep: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ActivationBatch:
    """Rows of one forward pass over ``windows``; ``keep [b, n_ctx]`` selects rows (tokens)."""
    from mechscope.interp.capture import capture

    model = Model.wrap(model)
    sites = list(sites)
    acts = capture(model, windows, sites)
    flat = {s: flatten_site(s, acts[s]) for s in sites}
    if keep is not None:
        flat = {s: a[keep.reshape(-1).to(a.device)] for s, a in flat.items()}
    target = device if device is not None else "cpu"
    return ActivationBatch({s: a.to(device=target, dtype=dtype or a.dtype) for s, a in flat.items()},
                           *provenance(windows, seq_index, keep, target))


def provenance(windows: Int[Tensor, "b n_ctx"], seq_index: Int[Tensor, "b"], keep: Tensor | None,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """``(token_ids, seq_index, positions)`` of the rows of ``windows`` (``keep`` selects rows),
    in the order `window_rows` yields them: a function of the windows alone, so every rank of a
    data-parallel job knows the provenance of the rows another rank computes."""
    b, n = windows.shape
    fields = (windows.reshape(-1).cpu(), seq_index.cpu().repeat_interleave(n), torch.arange(n).repeat(b))
    if keep is not None:
        fields = tuple(f[keep.reshape(-1).cpu()] for f in fields)
    return tuple(f.to(device) for f in fields)


def site_dims(model: "ModelLike", sites: Iterable[Site], n_ctx: int = 2) -> dict[Site, int]:
    """Row width per site (the ``d`` of `flatten_site` rows), from `capture.site_shapes`."""
    from mechscope.interp.capture import site_shapes

    shapes = site_shapes(model, list(sites), n_ctx)
    return {s: int(flatten_site(s, torch.empty((1, *shape), device="meta")).shape[1])
            for s, shape in shapes.items()}


def batch_to_state(batch: ActivationBatch | None) -> dict[str, Tensor] | None:
    if batch is None:
        return None
    out = {f"acts.{s}": a.detach().cpu().clone() for s, a in batch.acts.items()}
    out.update(token_ids=batch.token_ids.cpu().clone(), seq_index=batch.seq_index.cpu().clone(),
               positions=batch.positions.cpu().clone())
    return out


def batch_from_state(state: dict[str, Tensor] | None, sites: Iterable[Site],
                     device: torch.device | str) -> ActivationBatch | None:
    if state is None:
        return None
    return ActivationBatch({s: state[f"acts.{s}"] for s in sites}, state["token_ids"],
                           state["seq_index"], state["positions"]).to(device)


# ---------------------------------------------------------------------------------------------
# the stream
# ---------------------------------------------------------------------------------------------
class ActivationStream:
    """Batches of ``batch_tokens`` activation rows at ``sites`` from ``model`` over ``token_stream``.

    ``shuffle_buffer`` is the buffer size in rows (``None``: ``8 * batch_tokens``; ``0``: no
    shuffling, rows in stream order). ``dtype`` casts rows (e.g. ``torch.bfloat16`` to halve
    the buffer); ``device`` is where the buffer and the yielded batches live. The last batch
    may be short unless ``drop_last``. One stream is one cursor: iterating continues from the
    current position.
    """

    def __init__(
        self,
        model: "ModelLike",
        token_stream: TokenStream,
        sites: "Iterable[Site | str] | Site | str",
        batch_tokens: int = 4096,
        model_batch_size: int = 8,
        shuffle_buffer: int | None = None,
        seed: int = 0,
        exclude_special: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        drop_last: bool = False,
    ) -> None:
        from mechscope.interp.capture import resolve_sites

        model = Model.wrap(model)
        self.model, self.token_stream = model, token_stream
        self.sites = tuple(resolve_sites(model, sites))
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites repeat: {', '.join(map(str, self.sites))}")
        if shuffle_buffer is None:
            shuffle_buffer = 8 * batch_tokens
        if batch_tokens < 1 or model_batch_size < 1:
            raise ValueError(f"batch_tokens and model_batch_size must be >= 1, got {batch_tokens}, {model_batch_size}")
        if shuffle_buffer and shuffle_buffer < batch_tokens:
            raise ValueError(f"shuffle_buffer ({shuffle_buffer} rows) must be 0 (no shuffling) or at least "
                             f"batch_tokens ({batch_tokens})")
        if token_stream.n_ctx > model.n_ctx:
            raise ValueError(f"token stream windows have n_ctx={token_stream.n_ctx}, more than the model's "
                             f"context {model.n_ctx}; build the token stream with n_ctx <= {model.n_ctx}")
        self.batch_tokens, self.model_batch_size = batch_tokens, model_batch_size
        self.shuffle_buffer, self.seed = int(shuffle_buffer), int(seed)
        self.exclude_special, self.drop_last = exclude_special, drop_last
        self.device, self.dtype = torch.device(device), dtype
        self.d = site_dims(model, self.sites, token_stream.n_ctx)
        self.world = (0, 1)  # see `share_work`
        self._reset()

    def _reset(self) -> None:
        self._rng = torch.Generator().manual_seed(self.seed)
        self._buf: ActivationBatch | None = None  # capacity rows, first `_fill` valid
        self._fill = 0
        # computed rows not yet in the buffer, as pieces: concatenated once per draw, so a large
        # batch_tokens does not re-copy the rows staged so far on every forward pass
        self._stage: list[ActivationBatch] = []
        self._exhausted = False
        self._windows: Iterator[tuple[Tensor, Tensor]] | None = None
        self.batches_yielded = 0

    # -- producing rows -----------------------------------------------------------------------
    def _pull(self) -> bool:
        """Run the model on the next windows and stage their rows; False once the stream ends."""
        if self._exhausted:
            return False
        if self._windows is None:
            self._windows = self.token_stream.indexed_batches(self.model_batch_size * self.world[1])
        nxt = next(self._windows, None)
        if nxt is None:
            self._exhausted = True
            return False
        index, windows = nxt
        keep = self.token_stream.keep_mask(windows) if self.exclude_special else None
        if self.world[1] == 1:
            rows = window_rows(self.model, windows, index, self.sites, keep, self.dtype, self.device)
            if len(rows):
                self._stage.append(rows)
        else:
            self._stage.extend(r for r in self._shared_rows(index, windows, keep) if len(r))
        return True

    def share_work(self, world: "tuple[int, int]") -> None:
        """Data parallel over ``world = (rank, size)`` processes (`mechscope.world`): from now on
        this rank runs the model on its ``model_batch_size`` windows of every ``size *
        model_batch_size`` and receives the other ranks' rows, so every rank yields the batches one
        process yields (and saves the same position) while running 1/size of the forward passes.
        Every rank must iterate in step; call before iterating (or after `load_state_dict`)."""
        rank, size = int(world[0]), int(world[1])
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in a world of {size} process(es)")
        self.world, self._windows = (rank, size), None

    def _shared_rows(self, index: Tensor, windows: Tensor, keep: Tensor | None) -> list[ActivationBatch]:
        """The rows of ``size`` consecutive shares of ``model_batch_size`` windows, share ``j``
        computed by rank ``j`` and broadcast (the row counts follow from the windows)."""
        from mechscope.world import broadcast_from

        (rank, size), m = self.world, self.model_batch_size
        dtype = self.dtype or self.model.dtype  # the dtype every rank allocates for the rows
        parts = []
        for j in range(size):
            share = slice(j * m, (j + 1) * m)
            w, i, k = windows[share], index[share], keep[share] if keep is not None else None
            if not len(w):
                break
            if j == rank:
                acts = dict(window_rows(self.model, w, i, self.sites, k, dtype, self.device).acts)
            else:
                n = int(k.sum()) if k is not None else w.numel()
                acts = {s: torch.empty((n, self.d[s]), dtype=dtype, device=self.device) for s in self.sites}
            broadcast_from(j, [acts[s] for s in self.sites])
            parts.append(ActivationBatch(acts, *provenance(w, i, k, self.device)))
        return parts

    def _take_stage(self, n: int) -> ActivationBatch:
        parts = []
        while n:
            piece = self._stage[0]
            if len(piece) <= n:
                parts.append(self._stage.pop(0))
                n -= len(piece)
            else:
                parts.append(piece.index(slice(0, n)))
                self._stage[0] = piece.index(slice(n, None))
                n = 0
        return parts[0] if len(parts) == 1 else ActivationBatch.concat(parts)

    def _staged(self) -> int:
        return sum(len(p) for p in self._stage)

    def _alloc(self, like: ActivationBatch) -> None:
        c = self.shuffle_buffer
        self._buf = ActivationBatch(
            {s: torch.empty((c, a.shape[1]), dtype=a.dtype, device=a.device) for s, a in like.acts.items()},
            *(torch.empty(c, dtype=torch.int64, device=self.device) for _ in range(3)),
        )

    def _write(self, at: Tensor | slice, rows: ActivationBatch) -> None:
        buf = self._buf
        for s in self.sites:
            buf.acts[s][at] = rows.acts[s]
        buf.token_ids[at], buf.seq_index[at], buf.positions[at] = rows.token_ids, rows.seq_index, rows.positions

    # -- drawing batches ----------------------------------------------------------------------
    def _next_ordered(self) -> ActivationBatch | None:
        while self._staged() < self.batch_tokens and self._pull():
            pass
        n = min(self._staged(), self.batch_tokens)
        if n == 0 or (n < self.batch_tokens and self.drop_last):
            return None
        return self._take_stage(n)

    def _top_up(self) -> None:
        while self._fill < self.shuffle_buffer:
            if not self._staged() and not self._pull():
                return
            n = min(self._staged(), self.shuffle_buffer - self._fill)
            rows = self._take_stage(n)
            if self._buf is None:
                self._alloc(rows)
            self._write(slice(self._fill, self._fill + n), rows)
            self._fill += n

    def _next_shuffled(self) -> ActivationBatch | None:
        self._top_up()
        f = self._fill
        n = min(f, self.batch_tokens)
        if n == 0 or (n < self.batch_tokens and self.drop_last):
            return None
        idx = torch.randperm(f, generator=self._rng)[:n]
        out = self._buf.index(idx.to(self.device))
        # close the holes below f - n with the unselected rows of the last n slots
        chosen = torch.zeros(f, dtype=torch.bool)
        chosen[idx] = True
        holes = torch.sort(idx[idx < f - n]).values
        tail = torch.arange(f - n, f)
        movers = tail[~chosen[tail]]
        if len(holes):
            self._write(holes.to(self.device), self._buf.index(movers.to(self.device)))
        self._fill = f - n
        return out

    def __iter__(self) -> Iterator[ActivationBatch]:
        while True:
            batch = self._next_shuffled() if self.shuffle_buffer else self._next_ordered()
            if batch is None:
                return
            self.batches_yielded += 1
            yield batch

    # -- position -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"sites": [str(s) for s in self.sites], "batch_tokens": self.batch_tokens,
                "model_batch_size": self.model_batch_size, "shuffle_buffer": self.shuffle_buffer,
                "seed": self.seed, "exclude_special": self.exclude_special, "drop_last": self.drop_last,
                "dtype": str(self.dtype), "model": self.model.name}

    def state_dict(self) -> dict[str, Any]:
        buf = None if self._buf is None else self._buf.index(slice(0, self._fill))
        stage = ActivationBatch.concat(self._stage) if self._stage else None
        return {
            "kind": "activation_stream", "version": STATE_VERSION, "config": self.config(),
            "tokens": self.token_stream.state_dict(), "rng": self._rng.get_state(),
            "exhausted": self._exhausted, "batches_yielded": self.batches_yielded,
            "buffer": batch_to_state(buf), "stage": batch_to_state(stage),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resume_state(state, "activation_stream", STATE_VERSION, self.config(), "activation stream",
                           StreamStateError)
        self.token_stream.load_state_dict(state["tokens"])
        self._reset()
        self._rng.set_state(state["rng"])
        self._exhausted, self.batches_yielded = bool(state["exhausted"]), int(state["batches_yielded"])
        stage = batch_from_state(state["stage"], self.sites, self.device)
        self._stage = [stage] if stage is not None else []
        buf = batch_from_state(state["buffer"], self.sites, self.device)
        if buf is not None and len(buf):
            self._alloc(buf)
            self._fill = len(buf)
            self._write(slice(0, self._fill), buf)
