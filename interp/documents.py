"""Documents as token streams: text lists, files, folders, globs and Hugging Face datasets.

A `DocumentSource` yields documents (strings) in a fixed order from any document index; a
`DocumentTokenStream` tokenises them on the fly into windows as described in
`mechscope.interp.tokens`, and can resume from (document index, token offset).
"""

from __future__ import annotations

import glob
import itertools
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechscope.interp.tokens import (
    STATE_VERSION, TokenStream, TokenStreamError, _check_epochs, _default_id, _tokenized_docs,
    bos_token_id,
)

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

    def __str__(self) -> str:
        return f"the list of {len(self.texts)} texts"


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
            try:
                text = f.read_text(encoding=self.encoding)
            except UnicodeDecodeError as e:
                raise TokenStreamError(f"text file {f} is not {self.encoding} text ({e.reason} at byte "
                                       f"{e.start}); convert it, e.g. iconv -f latin1 -t utf-8") from None
            if self.split is None:
                yield text
            else:
                yield from (p for p in text.split(self.split) if p.strip())

    def describe(self) -> dict[str, Any]:
        return {"source": "files", "files": [str(f) for f in self.files], "split": self.split}

    def __str__(self) -> str:
        names = [str(f) for f in self.files]
        return "text file" + (f" {names[0]}" if len(names) == 1 else f"s {', '.join(names[:3])}"
                              + (f" (+{len(names) - 3} more)" if len(names) > 3 else ""))


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

    def __str__(self) -> str:
        return f"dataset {self.info.get('name', '(in memory)')!r} column {self.text_column!r}"


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
        bos_id = int(bos_id) if bos_id is not None else bos_token_id(tokenizer)
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
                # a pass from the very start that yields nothing would yield nothing forever
                self._fresh, self._tokens_seen = (self._doc, self._offset) == (0, 0), 0
                self._live = self._windows_from(self._doc, self._offset, self._index)
            nxt = next(self._live, None)
            if nxt is not None:
                index, window, self._doc, self._offset = nxt
                self._index = index + 1
                self._fresh = False
                return index, window
            self._live = None
            if self._fresh:
                raise TokenStreamError(
                    f"{self.source} holds {self._tokens_seen} tokens (separators included), fewer than "
                    f"one context window needs ({self.body_len} besides BOS, n_ctx={self.n_ctx}): "
                    "give more text or a smaller n_ctx")
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
            self._tokens_seen += len(toks)
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
