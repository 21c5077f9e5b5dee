"""Token streams: fixed-length context windows from documents or token-id memmaps.

A token stream turns a corpus into context windows ``w`` of length ``n_ctx``, the unit a model
forward pass (and so an activation stream) consumes. Documents ``d_1, d_2, ...`` are tokenised
(a batch of documents per tokenizer call) and concatenated with a separator token ``s`` (the
EOS token, or BOS where there is none)::

    c = tok(d_1) s tok(d_2) s tok(d_3) s ...

and ``c`` is cut into consecutive bodies of ``m = n_ctx - 1`` tokens (``m = n_ctx`` without BOS).
Window ``i`` (its *natural index*) is ``[BOS] + c[i m : (i + 1) m]``: every window starts with
BOS, as in the SAELens / OpenAI SAE recipes (Bricken et al. 2023, "Towards Monosemanticity";
Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), so no position 0 ever sees a
truncated document head as its first token. A final body shorter than ``m`` is dropped.
Special tokens (BOS, the separator, the tokenizer's other specials) can be excluded from the
rows that get activations through `TokenStream.keep_mask`; they are attention sinks whose
activations have norms far from the rest (Xiao et al. 2023, "Efficient streaming language
models with attention sinks").

Order and resumption. A stream is one cursor. Unshuffled, it yields windows in natural order.
A memmap stream shuffles exactly, by a seeded permutation of all window indices per epoch; a
document stream (whose length is unknown until read) shuffles through a buffer of ``B``
windows: fill the buffer, then repeatedly yield a uniformly chosen slot (seeded generator) and
refill it with the next window. ``state_dict()`` after ``k`` yielded windows holds the source
position of the next unread token (document index, token offset), the buffer and the RNG state,
so ``load_state_dict`` on a fresh stream continues with exactly window ``k + 1``.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

STATE_VERSION = 1


class TokenStreamError(ValueError):
    """A token stream configured wrongly, or a state that does not belong to this stream."""


# ---------------------------------------------------------------------------------------------
# the common interface
# ---------------------------------------------------------------------------------------------
class TokenStream(ABC):
    """Iterable of ``LongTensor [n_ctx]`` windows with a restorable position.

    Subclasses implement `iter_indexed` (``(natural_index, window)`` pairs continuing from the
    current position), `state_dict`, `load_state_dict` and `config`.
    """

    n_ctx: int
    prepend_bos: bool
    bos_id: int | None
    special_ids: frozenset[int]

    def _init_windows(self, n_ctx: int, prepend_bos: bool, bos_id: int | None,
                      special_ids: Iterable[int]) -> None:
        if prepend_bos and bos_id is None:
            raise TokenStreamError("prepend_bos=True needs a BOS id: pass bos_id=... "
                                   "(or a tokenizer with a bos/eos token), or prepend_bos=False")
        min_ctx = 2 if prepend_bos else 1
        if not isinstance(n_ctx, int) or n_ctx < min_ctx:
            raise TokenStreamError(f"n_ctx must be an int >= {min_ctx} (prepend_bos={prepend_bos}), got {n_ctx!r}")
        self.n_ctx, self.prepend_bos, self.bos_id = n_ctx, prepend_bos, bos_id
        ids = set(int(i) for i in special_ids)
        if bos_id is not None:
            ids.add(int(bos_id))
        self.special_ids = frozenset(ids)

    @property
    def body_len(self) -> int:
        """Corpus tokens per window (``n_ctx - 1`` with BOS prepended)."""
        return self.n_ctx - 1 if self.prepend_bos else self.n_ctx

    def _window(self, body: np.ndarray) -> Int[Tensor, "n_ctx"]:
        w = torch.from_numpy(np.asarray(body, dtype=np.int64))
        if self.prepend_bos:
            w = torch.cat([torch.tensor([self.bos_id], dtype=torch.int64), w])
        return w

    @abstractmethod
    def iter_indexed(self) -> Iterator[tuple[int, Int[Tensor, "n_ctx"]]]:
        """``(natural window index, window)`` from the current position; advances the position."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Position after the last yielded window (plain values and tensors only)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from `state_dict` of a stream with the same config)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able description (source, n_ctx, BOS, shuffle) for manifests and checks."""

    def __iter__(self) -> Iterator[Int[Tensor, "n_ctx"]]:
        for _, window in self.iter_indexed():
            yield window

    def batches(self, batch_size: int) -> Iterator[Int[Tensor, "b n_ctx"]]:
        """Stacks of ``batch_size`` windows (the last one may be smaller)."""
        for chunk in self.indexed_batches(batch_size):
            yield chunk[1]

    def indexed_batches(self, batch_size: int) -> Iterator[tuple[Int[Tensor, "b"], Int[Tensor, "b n_ctx"]]]:
        """``(natural indices [b], windows [b, n_ctx])``; the position advances per window."""
        if batch_size < 1:
            raise TokenStreamError(f"batch_size must be >= 1, got {batch_size}")
        it = self.iter_indexed()
        while True:
            chunk = list(itertools.islice(it, batch_size))
            if not chunk:
                return
            yield (torch.tensor([i for i, _ in chunk], dtype=torch.int64),
                   torch.stack([w for _, w in chunk]))

    def keep_mask(self, tokens: Int[Tensor, "*shape"]) -> Bool[Tensor, "*shape"]:
        """True where a token is not special (BOS, separator, tokenizer specials)."""
        if not self.special_ids:
            return torch.ones_like(tokens, dtype=torch.bool)
        special = torch.tensor(sorted(self.special_ids), dtype=tokens.dtype, device=tokens.device)
        return ~torch.isin(tokens, special)

    def _check_state(self, state: dict[str, Any], kind: str) -> None:
        if not isinstance(state, dict) or state.get("kind") != kind:
            got = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise TokenStreamError(f"state is for a {got!r} token stream, this is a {kind!r} stream")
        if state.get("version") != STATE_VERSION:
            raise TokenStreamError(f"state version {state.get('version')!r} unsupported (expected {STATE_VERSION})")
        if state.get("config") != self.config():
            raise TokenStreamError(
                "state was saved by a token stream with another config; "
                f"saved {state.get('config')}, this stream {self.config()}"
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
        bos_id = _default_id(bos_id, tokenizer, "bos_token_id", "eos_token_id")
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
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".npy":
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=out_dtype, shape=(n,))
    else:
        dst = np.memmap(tmp, dtype=out_dtype, mode="w+", shape=(n,))
    for s in range(0, n, 1 << 22):
        dst[s:s + (1 << 22)] = src[s:s + (1 << 22)]
    dst.flush()
    del dst, src
    raw.unlink()
    os.replace(tmp, path)
    meta = {"format": "mechscope-token-memmap", "version": 1, "dtype": out_dtype.name,
            "n_tokens": n, "sep_id": sep_id, "bos_id": bos_id}
    _atomic_write_text(_sidecar(path), json.dumps(meta, indent=1))
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def open_token_memmap(path: str | os.PathLike, dtype: str | None = None) -> tuple[np.ndarray, dict]:
    """The token array (read-only memmap) and its sidecar metadata (``{}`` if none)."""
    path = Path(path)
    if not path.is_file():
        raise TokenStreamError(f"token memmap {path} does not exist")
    meta = json.loads(_sidecar(path).read_text()) if _sidecar(path).is_file() else {}
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
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


def _check_epochs(epochs: int | None) -> None:
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise TokenStreamError(f"epochs must be a positive int or None (forever), got {epochs!r}")


# ---------------------------------------------------------------------------------------------
# document sources
# ---------------------------------------------------------------------------------------------
class DocumentSource(ABC):
    """Documents (strings) in a fixed order, readable from any document index."""

    @abstractmethod
    def iter_from(self, start: int) -> Iterator[str]: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...


class TextListSource(DocumentSource):
    def __init__(self, texts: Sequence[str]) -> None:
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TokenStreamError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        self.texts = list(texts)

    def iter_from(self, start: int) -> Iterator[str]:
        return iter(self.texts[start:])

    def describe(self) -> dict[str, Any]:
        return {"source": "texts", "n_docs": len(self.texts)}


class TextFileSource(DocumentSource):
    """Text files matched by paths, folders (all ``*.txt`` below) or glob patterns, sorted.

    Each file is one document, or with ``split`` (e.g. ``"\\n\\n"``) each non-empty piece is.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], split: str | None = None,
                 encoding: str = "utf-8") -> None:
        self.files = text_files(paths)
        self.split, self.encoding = split, encoding

    def iter_from(self, start: int) -> Iterator[str]:
        return itertools.islice(self._all(), start, None)

    def _all(self) -> Iterator[str]:
        for f in self.files:
            text = f.read_text(encoding=self.encoding)
            if self.split is None:
                yield text
            else:
                yield from (p for p in text.split(self.split) if p.strip())

    def describe(self) -> dict[str, Any]:
        return {"source": "files", "files": [str(f) for f in self.files], "split": self.split}


def text_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Sorted files from paths, folders (``**/*.txt``) and glob patterns; an error if none."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            found.update(q for q in p.rglob("*.txt") if q.is_file())
        elif p.is_file():
            found.add(p)
        else:
            found.update(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
    if not found:
        raise TokenStreamError(f"no text files found for {[str(p) for p in paths]} "
                               "(give files, folders holding *.txt, or glob patterns)")
    return sorted(found)


class DatasetSource(DocumentSource):
    """A Hugging Face dataset's text column; map-style or streaming (``IterableDataset``).

    ``factory()`` returns the dataset; it is called again on every (re)start so a streaming
    dataset restarts from its beginning, then skips ``start`` documents.
    """

    def __init__(self, factory: Callable[[], Any], text_column: str = "text",
                 info: dict[str, Any] | None = None) -> None:
        self.factory, self.text_column = factory, text_column
        self.info = info or {"source": "dataset"}

    def iter_from(self, start: int) -> Iterator[str]:
        ds = self.factory()
        names = getattr(ds, "column_names", None)
        if names is not None and self.text_column not in names:
            raise TokenStreamError(f"dataset has no column {self.text_column!r}; columns: {', '.join(names)}")
        if start:
            ds = ds.select(range(start, len(ds))) if hasattr(ds, "select") and hasattr(ds, "__len__") \
                else ds.skip(start)
        for row in ds:
            if self.text_column not in row:
                raise TokenStreamError(f"dataset row has no column {self.text_column!r}; columns: {', '.join(row)}")
            yield row[self.text_column]

    def describe(self) -> dict[str, Any]:
        return {**self.info, "text_column": self.text_column}


def hf_dataset_source(name: str, split: str = "train", config_name: str | None = None,
                      text_column: str = "text", streaming: bool = True, **kwargs: Any) -> DatasetSource:
    """Documents of a Hub dataset, streamed (``datasets.load_dataset(name, streaming=True)``).

    Needs the Hugging Face hub (or a local dataset script/folder name); offline, build a
    `DatasetSource` around ``datasets.load_dataset("text", data_files=..., streaming=True)``.
    """
    def factory() -> Any:
        import datasets

        return datasets.load_dataset(name, config_name, split=split, streaming=streaming, **kwargs)

    info = {"source": "hf", "name": name, "config": config_name, "split": split, "streaming": streaming}
    return DatasetSource(factory, text_column, info)


# ---------------------------------------------------------------------------------------------
# document token streams
# ---------------------------------------------------------------------------------------------
def _default_id(given: int | None, tokenizer: Any, first: str, second: str) -> int | None:
    if given is not None:
        return int(given)
    for attr in (first, second):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return None


def _tokenized_docs(docs: Iterable[Any], tokenizer: Any, batch: int) -> Iterator[Sequence[int]]:
    """Token ids per document; strings are batch-encoded, id sequences pass through."""
    it = iter(docs)
    while True:
        chunk = list(itertools.islice(it, batch))
        if not chunk:
            return
        if isinstance(chunk[0], str):
            if tokenizer is None:
                raise TokenStreamError("documents are strings but no tokenizer was given")
            yield from tokenize(tokenizer, chunk)
        else:
            yield from chunk


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Batch-encode without special tokens (the stream adds BOS / separators itself)."""
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return enc["input_ids"]


class DocumentTokenStream(TokenStream):
    """Windows from a `DocumentSource` tokenised on the fly (see module doc).

    ``sep_id``/``bos_id`` default to the tokenizer's EOS/BOS (each falling back to the other);
    ``separate_docs=False`` concatenates documents with no separator. ``shuffle_windows=B > 0``
    shuffles through a buffer of ``B`` windows seeded by ``seed``. ``special_ids`` defaults to
    the tokenizer's special ids plus BOS and the separator.
    """

    def __init__(self, source: DocumentSource, tokenizer: Any, n_ctx: int, *, prepend_bos: bool = True,
                 bos_id: int | None = None, sep_id: int | None = None, separate_docs: bool = True,
                 special_ids: Iterable[int] | None = None, shuffle_windows: int = 0, seed: int = 0,
                 epochs: int | None = 1, tokenize_batch: int = 64) -> None:
        if tokenizer is None:
            raise TokenStreamError("a document stream needs a tokenizer (Hugging Face tokenizer)")
        self.source, self.tokenizer = source, tokenizer
        bos_id = _default_id(bos_id, tokenizer, "bos_token_id", "eos_token_id")
        self.sep_id = _default_id(sep_id, tokenizer, "eos_token_id", "bos_token_id") if separate_docs else None
        if separate_docs and self.sep_id is None:
            raise TokenStreamError("separate_docs=True needs sep_id=... (the tokenizer has no EOS/BOS token)")
        if special_ids is None:
            special_ids = list(getattr(tokenizer, "all_special_ids", []) or [])
            special_ids += [i for i in (self.sep_id,) if i is not None]
        self._init_windows(n_ctx, prepend_bos, bos_id, special_ids)
        _check_epochs(epochs)
        if shuffle_windows < 0 or tokenize_batch < 1:
            raise TokenStreamError(f"shuffle_windows must be >= 0 and tokenize_batch >= 1, "
                                   f"got {shuffle_windows}, {tokenize_batch}")
        self.shuffle_windows, self.seed, self.epochs = int(shuffle_windows), int(seed), epochs
        self.tokenize_batch = tokenize_batch
        self.load_state_dict(None)

    # -- construction helpers -----------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer: Any, n_ctx: int, **kw: Any) -> "DocumentTokenStream":
        return cls(TextListSource(texts), tokenizer, n_ctx, **kw)

    @classmethod
    def from_files(cls, paths: Any, tokenizer: Any, n_ctx: int, split: str | None = None,
                   **kw: Any) -> "DocumentTokenStream":
        return cls(TextFileSource(paths, split), tokenizer, n_ctx, **kw)

    @classmethod
    def from_dataset(cls, dataset: Any, tokenizer: Any, n_ctx: int, text_column: str = "text",
                     **kw: Any) -> "DocumentTokenStream":
        """A local ``datasets.Dataset`` / ``IterableDataset`` already loaded."""
        return cls(DatasetSource(lambda: dataset, text_column), tokenizer, n_ctx, **kw)

    @classmethod
    def from_hf(cls, name: str, tokenizer: Any, n_ctx: int, split: str = "train",
                config_name: str | None = None, text_column: str = "text",
                dataset_kwargs: dict[str, Any] | None = None, **kw: Any) -> "DocumentTokenStream":
        """A Hub dataset streamed with ``streaming=True`` (needs the hub, except for packaged
        builders such as ``"text"`` with ``dataset_kwargs={"data_files": ...}``)."""
        source = hf_dataset_source(name, split, config_name, text_column, **(dataset_kwargs or {}))
        return cls(source, tokenizer, n_ctx, **kw)

    # -- position -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"kind": "documents", **self.source.describe(), "n_ctx": self.n_ctx,
                "prepend_bos": self.prepend_bos, "bos_id": self.bos_id, "sep_id": self.sep_id,
                "special_ids": sorted(self.special_ids), "shuffle_windows": self.shuffle_windows,
                "seed": self.seed, "epochs": self.epochs,
                "tokenizer": getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)}

    def state_dict(self) -> dict[str, Any]:
        buf = self._buffer
        return {
            "kind": "documents", "version": STATE_VERSION, "config": self.config(),
            "epoch": self._epoch, "doc": self._doc, "offset": self._offset, "index": self._index,
            "done": self._done,
            "buffer": torch.stack([w for _, w in buf]) if buf else torch.zeros(0, self.n_ctx, dtype=torch.int64),
            "buffer_index": torch.tensor([i for i, _ in buf], dtype=torch.int64),
            "rng": self._rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore ``state``; ``None`` rewinds to the start."""
        self._live: Iterator[tuple[int, Tensor, int, int]] | None = None
        self._rng = torch.Generator().manual_seed(self.seed)
        if state is None:
            self._epoch, self._doc, self._offset, self._index, self._done = 0, 0, 0, 0, False
            self._buffer: list[tuple[int, Tensor]] = []
            return
        self._check_state(state, "documents")
        self._epoch, self._doc, self._offset = int(state["epoch"]), int(state["doc"]), int(state["offset"])
        self._index, self._done = int(state["index"]), bool(state["done"])
        self._buffer = [(int(i), w.clone()) for i, w in zip(state["buffer_index"], state["buffer"])]
        self._rng.set_state(state["rng"])

    # -- iteration ----------------------------------------------------------------------------
    def iter_indexed(self) -> Iterator[tuple[int, Int[Tensor, "n_ctx"]]]:
        while True:
            if self.shuffle_windows == 0:
                item = self._next_natural()
                if item is None:
                    return
                yield item
                continue
            while len(self._buffer) < self.shuffle_windows:
                item = self._next_natural()
                if item is None:
                    break
                self._buffer.append(item)
            if not self._buffer:
                return
            j = int(torch.randint(len(self._buffer), (), generator=self._rng))
            item = self._buffer[j]
            self._buffer[j] = self._buffer[-1]
            self._buffer.pop()
            yield item

    def _next_natural(self) -> tuple[int, Tensor] | None:
        while not self._done:
            if self._live is None:
                self._live = self._windows_from(self._doc, self._offset, self._index)
            nxt = next(self._live, None)
            if nxt is not None:
                index, window, self._doc, self._offset = nxt
                self._index = index + 1
                return index, window
            self._live = None
            self._epoch += 1
            self._doc, self._offset, self._index = 0, 0, 0
            self._done = self.epochs is not None and self._epoch >= self.epochs
        return None

    def _windows_from(self, doc: int, offset: int, index: int) -> Iterator[tuple[int, Tensor, int, int]]:
        """Natural windows from token ``offset`` of document ``doc``, each with the position
        (document, offset) of the first token after it."""
        m, sep = self.body_len, ([] if self.sep_id is None else [self.sep_id])
        queue: deque[list] = deque()  # [doc index, tokens, offset of first unread token]
        available, d = 0, doc
        for ids in _tokenized_docs(self.source.iter_from(doc), self.tokenizer, self.tokenize_batch):
            toks = np.asarray(list(ids) + sep, dtype=np.int64)
            start = offset if d == doc else 0
            queue.append([d, toks, start])
            available += len(toks) - start
            d += 1
            while available >= m:
                parts, need = [], m
                while need:
                    entry = queue[0]
                    take = min(need, len(entry[1]) - entry[2])
                    parts.append(entry[1][entry[2]:entry[2] + take])
                    entry[2] += take
                    need -= take
                    if entry[2] == len(entry[1]):
                        queue.popleft()
                available -= m
                nd, noff = (queue[0][0], queue[0][2]) if queue else (d, 0)
                yield index, self._window(np.concatenate(parts)), nd, noff
                index += 1


def open_token_stream(source: Any, n_ctx: int, tokenizer: Any = None, **kw: Any) -> TokenStream:
    """A token stream from a loose spec, for the CLI: a ``.npy``/``.bin`` token memmap; text files
    (a file, folder or glob); a list of strings; or a Hub dataset name (streamed)."""
    if isinstance(source, (list, tuple)):
        return DocumentTokenStream.from_texts(source, tokenizer, n_ctx, **kw)
    text = str(source)
    if text.endswith((".npy", ".bin")):
        return MemmapTokenStream(text, n_ctx, **kw)
    p = Path(text).expanduser()
    if p.exists() or any(ch in text for ch in "*?["):
        return DocumentTokenStream.from_files(text, tokenizer, n_ctx, **kw)
    return DocumentTokenStream.from_hf(text, tokenizer, n_ctx, **kw)
