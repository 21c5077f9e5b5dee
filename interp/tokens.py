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

Text specs. Every entry point names its text the same way, and `open_token_stream` is the one
resolver: ``zoo:train`` / ``zoo:heldout`` (the zoo corpus, one document per work), ``hf:NAME[:SPLIT]``
(a Hub dataset, streamed), a ``.txt`` file / folder / glob, or a ``.npy``/``.bin`` token memmap.
`check_text_spec` validates a spec without reading it (configs call it once, when built); a
mistyped path is an error, never a Hub lookup. `token_ids` gives a spec's whole concatenation
``c`` for samplers of random windows; `window_batches` regroups windows into model batches.
"""

from __future__ import annotations

import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
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
        check_resume_state(state, kind, STATE_VERSION, self.config(), "token stream", TokenStreamError)


def check_resume_state(state: Any, kind: str, version: int, config: dict[str, Any], what: str,
                       error: type[Exception]) -> None:
    """The one check that a saved position belongs to this reader (a token stream, an activation
    stream, a cache reader): same ``kind``, a known ``version``, and the same ``config``; else
    ``error`` saying which differs."""
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise error(f"state is for a {got!r} {what}, this is a {kind!r} {what}")
    if state.get("version") != version:
        raise error(f"state version {state.get('version')!r} unsupported (expected {version})")
    if state.get("config") != config:
        raise error(f"state was saved by a {what} with another config; saved {state.get('config')}, "
                    f"this {what} {config}")


def _check_epochs(epochs: int | None) -> None:
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise TokenStreamError(f"epochs must be a positive int or None (forever), got {epochs!r}")


def bos_token_id(tokenizer: Any) -> int | None:
    """THE BOS rule, for code that has only a tokenizer (`Model.bos_id` uses it too): the
    tokenizer's BOS id, else its EOS id (GPT-2-style models separate documents with EOS and use
    it as BOS), else None (also for no tokenizer)."""
    return _default_id(None, tokenizer, "bos_token_id", "eos_token_id")


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


def window_batches(windows: Iterable[Tensor], batch_size: int,
                   n_tokens: int | None = None) -> Iterator[Int[Tensor, "b n_ctx"]]:
    """Token windows (items ``[n_ctx]`` or ``[b, n_ctx]``, e.g. a `TokenStream` or a tensor of
    windows) regrouped into model batches ``[<= batch_size, n_ctx]``: the one window batcher. A
    window of another length starts a new batch; with ``n_tokens`` it stops once that many
    positions are covered (the last window may be cut)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    items = [windows] if isinstance(windows, Tensor) else windows
    rows: list[Tensor] = []
    seen = 0
    for item in items:
        item = torch.as_tensor(item)
        if item.ndim not in (1, 2) or item.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token windows must be integer tensors [n_ctx] or [b, n_ctx], got "
                             f"{item.dtype} {tuple(item.shape)}")
        for row in item.reshape(-1, item.shape[-1]).long():
            if n_tokens is not None:
                row = row[: n_tokens - seen]
            if rows and row.shape != rows[0].shape:  # a cut or shorter window: its own batch
                yield torch.stack(rows)
                rows = []
            rows.append(row)
            seen += row.numel()
            done = n_tokens is not None and seen >= n_tokens
            if len(rows) == batch_size or done:
                yield torch.stack(rows)
                rows = []
            if done:
                return
    if rows:
        yield torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# text specs: the one resolver
# ---------------------------------------------------------------------------------------------
TEXT_SPEC_FORMS = ("'zoo:train', 'zoo:heldout', 'hf:NAME[:SPLIT]', a .txt file / folder / glob, "
                   "or a .npy/.bin token memmap")
ZOO_SPLITS = ("train", "heldout")


def check_text_spec(spec: str, what: str = "text spec") -> str:
    """``spec`` if it names text `open_token_stream` can read, else a `TokenStreamError` naming
    ``what`` (e.g. the config field), saying why, and listing the valid forms. Cheap (no file is
    read), so configs call it when they are built."""
    def bad(reason: str) -> TokenStreamError:
        return TokenStreamError(f"{what}={spec!r} is invalid: {reason}; valid forms: {TEXT_SPEC_FORMS}")

    if not isinstance(spec, str) or not spec:
        raise bad("it must be a non-empty string")
    if spec.startswith("zoo:"):
        if spec[4:] not in ZOO_SPLITS:
            raise bad("zoo text is 'zoo:train' or 'zoo:heldout'")
        return spec
    if spec.startswith("hf:"):
        if not spec[3:].partition(":")[0]:
            raise bad("no dataset name after 'hf:'")
        return spec
    if spec.endswith((".npy", ".bin")):
        from pathlib import Path

        if not Path(spec).expanduser().is_file():
            raise bad("token memmap file not found")
        return spec
    from mechscope.interp.documents import text_files

    try:
        text_files(spec)
    except TokenStreamError as exc:
        raise bad(str(exc)) from None
    return spec


def _tokenizer_of(model_or_tokenizer: Any) -> Any:
    """A Hugging Face tokenizer: itself, or the tokenizer of a `Model` / ``HookedTransformer``."""
    from mechscope.interp.models import Model

    if isinstance(model_or_tokenizer, (Model, torch.nn.Module)):
        return getattr(model_or_tokenizer, "tokenizer", None)
    return model_or_tokenizer


def text_documents(spec: "str | Sequence[str]") -> Any:
    """The `DocumentSource` of a text spec (not a memmap): zoo split works, Hub dataset, files,
    or a list of strings."""
    from mechscope.interp.documents import TextFileSource, TextListSource, hf_dataset_source

    if not isinstance(spec, str):
        return TextListSource(list(spec))
    check_text_spec(spec)
    if spec.endswith((".npy", ".bin")):
        raise TokenStreamError(f"text spec {spec!r} is a token memmap: it holds token ids, not documents")
    if spec.startswith("zoo:"):
        from mechscope.interp.zoo.corpus import corpus_text, split_works

        return TextListSource([d for d in split_works(corpus_text(spec[4:])) if d.strip()])
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        return hf_dataset_source(name, split or "train")
    return TextFileSource(spec)


def open_token_stream(source: "str | os.PathLike | Sequence[str]", n_ctx: int, tokenizer: Any = None, *,
                      seed: int = 0, epochs: int | None = 1, **kw: Any) -> TokenStream:
    """THE token stream of a text spec (`check_text_spec`: ``zoo:train`` / ``zoo:heldout``,
    ``hf:NAME[:SPLIT]``, a ``.txt`` file / folder / glob, a ``.npy``/``.bin`` token memmap) or of a
    list of strings. ``tokenizer``: a Hugging Face tokenizer or a `Model` (not needed for a
    memmap). ``kw`` goes to the stream class (shuffle, BOS, separators)."""
    from mechscope.interp.documents import DocumentTokenStream
    from mechscope.interp.token_memmap import MemmapTokenStream

    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    if isinstance(source, str) and check_text_spec(source).endswith((".npy", ".bin")):
        return MemmapTokenStream(source, n_ctx, seed=seed, epochs=epochs, **kw)
    return DocumentTokenStream(text_documents(source), _tokenizer_of(tokenizer), n_ctx, seed=seed,
                               epochs=epochs, **kw)


def token_ids(source: "str | os.PathLike | Sequence[str]", tokenizer: Any, max_tokens: int | None = None) -> Int[Tensor, " n"]:
    """The whole text of a spec (or list of strings) as one id sequence ``tok(d_1) s tok(d_2) s ...``
    (every document followed by the separator ``s``, EOS), for samplers that draw random windows;
    a memmap spec gives its ids. ``max_tokens`` stops reading early (a Hub dataset may be huge)."""
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    if isinstance(source, str) and check_text_spec(source).endswith((".npy", ".bin")):
        from mechscope.interp.token_memmap import open_token_memmap

        ids = torch.from_numpy(np.asarray(open_token_memmap(source)[0][:max_tokens], dtype=np.int64))
        return ids
    tok = _tokenizer_of(tokenizer)
    if tok is None:
        raise TokenStreamError(f"text {source!r} needs a tokenizer (the model has none)")
    sep = _default_id(None, tok, "eos_token_id", "bos_token_id")
    if sep is None:
        raise TokenStreamError("the tokenizer has no EOS or BOS token to separate documents with")
    out: list[int] = []
    for ids in _tokenized_docs(text_documents(source).iter_from(0), tok, 64):
        out.extend(ids)
        out.append(sep)
        if max_tokens is not None and len(out) >= max_tokens:
            return torch.tensor(out[:max_tokens], dtype=torch.long)
    return torch.tensor(out, dtype=torch.long)
