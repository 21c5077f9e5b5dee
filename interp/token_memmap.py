"""Token-id memmaps: a flat array of token ids on disk, cut into windows (see `mechscope.interp.tokens`).

`write_token_memmap` tokenises documents once into a ``.npy`` (or raw ``.bin``) file of uint16 /
uint32 ids with a JSON sidecar; `MemmapTokenStream` reads windows from it with an exact, seeded
per-epoch permutation when shuffled, and random access to any window by its natural index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechscope.files import atomic_path, write_text
from mechscope.interp.tokens import (
    STATE_VERSION, TokenStream, TokenStreamError, _check_epochs, _default_id, _tokenized_docs,
    bos_token_id,
)

# ---------------------------------------------------------------------------------------------
# token-id memmaps
# ---------------------------------------------------------------------------------------------
def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_token_memmap(
    path: str | os.PathLike,
    docs: Iterable[str] | Iterable[Sequence[int]],
    tokenizer: Any = None,
    sep_id: int | None = None,
    bos_id: int | None = None,
    dtype: str = "auto",
    tokenize_batch: int = 256,
) -> Path:
    """Write documents as one flat token-id array ``tok(d_1) s tok(d_2) s ...`` to ``path``.

    ``docs`` are strings (tokenised by ``tokenizer``, a batch per call) or token-id sequences.
    ``path`` ending in ``.npy`` is a NumPy array file (``np.load(mmap_mode="r")``); any other
    suffix (``.bin``) is raw little-endian ids. A sidecar ``<path>.json`` records dtype, length,
    ``sep_id`` and ``bos_id`` (defaults: the tokenizer's EOS / BOS, each falling back to the
    other). ``dtype`` is ``"uint16"``, ``"uint32"`` or ``"auto"`` (the smallest that holds the
    largest id). Both files are written to temporaries and renamed into place.
    """
    path = Path(path)
    if dtype not in ("auto", "uint16", "uint32"):
        raise TokenStreamError(f"dtype must be 'auto', 'uint16' or 'uint32', got {dtype!r}")
    if tokenizer is not None:
        sep_id = _default_id(sep_id, tokenizer, "eos_token_id", "bos_token_id")
        bos_id = int(bos_id) if bos_id is not None else bos_token_id(tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.name + ".raw.tmp")
    n, top = 0, -1
    with open(raw, "wb") as f:
        for ids in _tokenized_docs(docs, tokenizer, tokenize_batch):
            arr = np.asarray(list(ids) + ([] if sep_id is None else [sep_id]), dtype=np.int64)
            if arr.size == 0:
                continue
            if arr.min() < 0:
                raise TokenStreamError(f"negative token id {int(arr.min())} in document")
            top = max(top, int(arr.max()))
            if top >= 2**32:
                raise TokenStreamError(f"token id {top} does not fit uint32")
            f.write(arr.astype("<u4").tobytes())
            n += arr.size
    if n == 0:
        raw.unlink()
        raise TokenStreamError("no tokens to write: the documents are empty and there is no separator")
    out_dtype = np.dtype(("<u2" if top < 2**16 else "<u4") if dtype == "auto" else dtype).newbyteorder("<")
    if top >= np.iinfo(out_dtype).max + 1:
        raw.unlink()
        raise TokenStreamError(f"largest token id {top} does not fit {dtype}; use dtype='uint32' or 'auto'")
    src = np.memmap(raw, dtype="<u4", mode="r", shape=(n,))
    with atomic_path(path) as tmp:
        if path.suffix == ".npy":
            dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=out_dtype, shape=(n,))
        else:
            dst = np.memmap(tmp, dtype=out_dtype, mode="w+", shape=(n,))
        for s in range(0, n, 1 << 22):
            dst[s:s + (1 << 22)] = src[s:s + (1 << 22)]
        dst.flush()
        del dst, src
    raw.unlink()
    meta = {"format": "mechscope-token-memmap", "version": 1, "dtype": out_dtype.name,
            "n_tokens": n, "sep_id": sep_id, "bos_id": bos_id}
    write_text(_sidecar(path), json.dumps(meta, indent=1))
    return path


def open_token_memmap(path: str | os.PathLike, dtype: str | None = None) -> tuple[np.ndarray, dict]:
    """The token array (read-only memmap) and its sidecar metadata (``{}`` if none)."""
    path = Path(path)
    if not path.is_file():
        raise TokenStreamError(f"token memmap {path} does not exist")
    meta = {}
    if _sidecar(path).is_file():
        try:
            meta = json.loads(_sidecar(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenStreamError(f"{_sidecar(path)} (sidecar of {path.name}) is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise TokenStreamError(f"{_sidecar(path)} (sidecar of {path.name}) must hold a JSON object")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise TokenStreamError(f"{path} is not a readable .npy token array ({e})") from None
        if arr.ndim != 1 or arr.dtype.kind != "u":
            raise TokenStreamError(f"{path}: expected a 1-d unsigned integer array, got {arr.dtype} {arr.shape}")
        return arr, meta
    dtype = dtype or meta.get("dtype")
    if dtype not in ("uint16", "uint32"):
        raise TokenStreamError(f"{path}: raw token file needs dtype 'uint16' or 'uint32' "
                               f"(pass dtype=... or keep its {_sidecar(path).name} sidecar), got {dtype!r}")
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise TokenStreamError(f"{path}: size {size} bytes is not a multiple of {dtype} ({itemsize} bytes)")
    if "n_tokens" in meta and meta["n_tokens"] != size // itemsize:
        raise TokenStreamError(f"{path}: holds {size // itemsize} tokens, sidecar says {meta['n_tokens']} (truncated?)")
    if size == 0:
        return np.zeros(0, dtype=dtype), meta
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r"), meta


class MemmapTokenStream(TokenStream):
    """Windows cut from a flat token-id array written by `write_token_memmap`.

    Window ``i`` is ``[BOS] + tokens[i m : (i + 1) m]``; `window` reads any window by its natural
    index. With ``shuffle`` each epoch visits all windows in the order of a permutation seeded
    by ``(seed, epoch)``. ``epochs=None`` repeats forever.
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int, *, prepend_bos: bool = True,
                 bos_id: int | None = None, special_ids: Iterable[int] | None = None,
                 shuffle: bool = False, seed: int = 0, epochs: int | None = 1,
                 dtype: str | None = None) -> None:
        self.path = Path(path)
        self.tokens, meta = open_token_memmap(self.path, dtype)
        bos_id = meta.get("bos_id") if bos_id is None else bos_id
        if special_ids is None:
            special_ids = [i for i in (meta.get("sep_id"), bos_id) if i is not None]
        self._init_windows(n_ctx, prepend_bos, bos_id, special_ids)
        _check_epochs(epochs)
        self.shuffle, self.seed, self.epochs = bool(shuffle), int(seed), epochs
        self.n_windows = len(self.tokens) // self.body_len
        if self.n_windows == 0:
            raise TokenStreamError(f"{self.path} holds {len(self.tokens)} tokens, fewer than one window body "
                                   f"({self.body_len}); use a smaller n_ctx or more text")
        self._epoch, self._cursor = 0, 0
        self._order_cache: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return self.n_windows

    def window(self, index: int) -> Int[Tensor, "n_ctx"]:
        if not 0 <= index < self.n_windows:
            raise IndexError(f"window {index} out of range 0..{self.n_windows - 1}")
        m = self.body_len
        return self._window(self.tokens[index * m:(index + 1) * m])

    def _order(self, epoch: int) -> Tensor:
        if self._order_cache is None or self._order_cache[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.n_windows, generator=g)
            else:
                order = torch.arange(self.n_windows)
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def iter_indexed(self) -> Iterator[tuple[int, Int[Tensor, "n_ctx"]]]:
        while self.epochs is None or self._epoch < self.epochs:
            order = self._order(self._epoch)
            while self._cursor < self.n_windows:
                i = int(order[self._cursor])
                self._cursor += 1
                yield i, self.window(i)
            self._epoch, self._cursor = self._epoch + 1, 0

    def config(self) -> dict[str, Any]:
        return {"kind": "memmap", "path": str(self.path), "n_tokens": int(len(self.tokens)),
                "n_ctx": self.n_ctx, "prepend_bos": self.prepend_bos, "bos_id": self.bos_id,
                "special_ids": sorted(self.special_ids), "shuffle": self.shuffle, "seed": self.seed,
                "epochs": self.epochs}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "memmap", "version": STATE_VERSION, "config": self.config(),
                "epoch": self._epoch, "cursor": self._cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state, "memmap")
        self._epoch, self._cursor = int(state["epoch"]), int(state["cursor"])
