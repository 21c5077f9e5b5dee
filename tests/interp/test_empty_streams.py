"""A token stream that can yield no window fails at once (it used to re-read an empty file forever
with ``epochs=None``); a stream resumed at the very end of an epoch still goes on."""

from __future__ import annotations

import itertools
import signal
import threading
from contextlib import contextmanager

import pytest

from mechscope.interp.documents import DocumentTokenStream
from mechscope.interp.token_memmap import MemmapTokenStream, write_token_memmap
from mechscope.interp.tokens import TokenStreamError


@pytest.fixture(scope="module")
def tokenizer():
    from mechscope.interp import zoo
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(zoo.model_dir("attn-only-induction"))  # one token per character


@contextmanager
def deadline(seconds: float):
    """A hang becomes a failure (where signals can be used) instead of a stuck test run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fail(*_):
        raise AssertionError(f"still running after {seconds}s: a hang")
    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("content", ["", "\n\n", "abc"])
@pytest.mark.parametrize("epochs", [None, 1, 3])
def test_a_text_file_with_less_than_one_window_fails_at_once(tokenizer, tmp_path, content, epochs):
    f = tmp_path / "short.txt"
    f.write_text(content)
    stream = DocumentTokenStream.from_files(f, tokenizer, n_ctx=16, epochs=epochs)
    with deadline(20), pytest.raises(TokenStreamError, match=rf"text file {f} holds \d+ tokens.*n_ctx=16"):
        next(iter(stream))


def test_texts_and_splits_that_yield_nothing(tokenizer, tmp_path):
    with deadline(20), pytest.raises(TokenStreamError, match="list of 2 texts holds 5 tokens"):
        next(iter(DocumentTokenStream.from_texts(["a", "bc"], tokenizer, 16, epochs=None)))
    (tmp_path / "a.txt").write_text("x" * 100)
    split = DocumentTokenStream.from_files(tmp_path / "a.txt", tokenizer, 16, split="x", epochs=None)
    with deadline(20), pytest.raises(TokenStreamError, match="holds 0 tokens"):
        next(iter(split))


def test_a_too_short_memmap_fails_when_opened(tmp_path):
    ids = write_token_memmap(tmp_path / "ids.npy", [[5, 6, 7]], sep_id=1, bos_id=0)
    with pytest.raises(TokenStreamError, match="holds 4 tokens, fewer than one window body"):
        MemmapTokenStream(ids, 16, epochs=None)


def test_one_window_is_enough_and_repeats_forever(tokenizer):
    text = "abcdefghijklmno"  # 15 characters + separator: one body of 15 tokens
    stream = DocumentTokenStream.from_texts([text], tokenizer, 16, epochs=None)
    with deadline(20):
        windows = list(itertools.islice(stream, 4))
    assert all(w.tolist() == windows[0].tolist() for w in windows)
    assert tokenizer.decode(windows[0][1:]) == text


def test_resumed_at_the_end_of_an_epoch_goes_on(tokenizer):
    """A state saved after the last window of an epoch resumes into the next epoch: the pass that
    yields nothing there is not a fresh pass, so it is not an empty stream."""
    texts = ["abcdefghijklmno", "pqrstuvwxyz0123"]  # exactly two windows per epoch with n_ctx 16
    full = list(itertools.islice(DocumentTokenStream.from_texts(texts, tokenizer, 16, epochs=None), 6))
    first = DocumentTokenStream.from_texts(texts, tokenizer, 16, epochs=None)
    head = list(itertools.islice(first, 2))
    state = first.state_dict()
    again = DocumentTokenStream.from_texts(texts, tokenizer, 16, epochs=None)
    again.load_state_dict(state)
    with deadline(20):
        rest = list(itertools.islice(again, 4))
    assert [w.tolist() for w in head + rest] == [w.tolist() for w in full]
