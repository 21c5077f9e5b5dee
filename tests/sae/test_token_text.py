"""Token strings a person can tell apart: byte tokens as ``<0xNN>``, checked against the bytes
of the text they came from."""

from __future__ import annotations

import re

import pytest

from mechscope.sae.token_text import bytes_text, token_strings


def _to_bytes(shown: str) -> bytes:
    """Invert the display: ``<0xNN>`` is one byte, anything else is UTF-8 text."""
    parts = re.split(r"(<0x[0-9A-F]{2}>)", shown)
    return b"".join(bytes([int(p[3:5], 16)]) if re.fullmatch(r"<0x[0-9A-F]{2}>", p) else p.encode() for p in parts)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.apps.helpers import nasty_tokenizer

    return nasty_tokenizer(tmp_path_factory.mktemp("tok"))


def test_byte_tokens_reassemble_the_text(tokenizer):
    text = "the cat — naïve\x01 “mat” 🙂"
    ids = tokenizer.encode(text, add_special_tokens=False)
    shown = token_strings(tokenizer, ids)
    assert "\ufffd" not in "".join(shown) and any(s.startswith("<0x") for s in shown)
    assert b"".join(_to_bytes(s) for s in shown) == text.encode()  # ground truth: the text's own bytes
    assert "<0x01>" in shown  # a control character is shown, not swallowed


def test_every_byte_token_reads_differently(tokenizer):
    ids = range(len(tokenizer))
    shown = token_strings(tokenizer, ids)
    raw = [tokenizer.decode([i]) for i in ids]
    broken = [s for s, r in zip(shown, raw) if "\ufffd" in r]
    assert len(broken) >= 64 and len(set(broken)) == len(broken)  # the 128 high bytes, all distinct
    assert all(s == r for s, r in zip(shown, raw) if "\ufffd" not in r and r.isprintable())


def test_bytes_text_and_no_tokenizer():
    assert bytes_text("é".encode() + b"\xe2\x80") == "é<0xE2><0x80>"
    assert token_strings(None, [3, 17]) == ["<3>", "<17>"]
