"""Token id → the string a person should see, with byte tokens made distinguishable.

``tokenizer.decode([id])`` of a byte-level BPE token that holds part of a multi-byte UTF-8
character (e.g. the three tokens of ``"—"`` = ``E2 80 94``) is ``"\\ufffd"``: several tokens
then read as the same ``�`` and a browser cannot tell them apart. Here such tokens are shown
by their bytes, ``<0xE2>``, the notation SentencePiece vocabularies (Llama) already use, and
control characters other than newline / tab likewise, so every string on screen is printable
and different tokens read differently (ids travel next to the strings in the cards).

Raw bytes come from the tokenizer's own vocabulary: SentencePiece byte pieces are already
``<0xNN>``; GPT-2-style byte-level BPE pieces map back to bytes through the inverse of GPT-2's
``bytes_to_unicode`` table (Radford et al. 2019, ``encoder.py``).
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _hex_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start:err.end]), err.end


codecs.register_error("mechscope_hexbytes", _hex_bytes)


@lru_cache(maxsize=1)
def _byte_level_inverse() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable stand-in character → byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def _printable(text: str) -> str:
    """Control characters (except ``\\n`` and ``\\t``, which the pages draw as arrows) as ``<0xNN>``."""
    return "".join(f"<0x{ord(c):02X}>" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c
                   for c in text)


def bytes_text(raw: bytes) -> str:
    """UTF-8 text of ``raw`` with every byte that is not part of a valid character as ``<0xNN>``."""
    return _printable(raw.decode("utf-8", errors="mechscope_hexbytes"))


def token_strings(tokenizer: Any, ids: Iterable[int]) -> list[str]:
    """What each token id shows on screen (see the module docstring); no tokenizer → ``<id>``."""
    ids = [int(t) for t in ids]
    if tokenizer is None:
        return [f"<{t}>" for t in ids]
    out = []
    for t in ids:
        text = tokenizer.decode([t])
        if "\ufffd" in text:
            text = _raw_piece(tokenizer, t, text)
        out.append(_printable(text))
    return out


def _raw_piece(tokenizer: Any, token_id: int, decoded: str) -> str:
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str):
        return decoded
    if _BYTE_PIECE.fullmatch(piece):
        return piece.upper().replace("0X", "0x")
    inverse = _byte_level_inverse()
    if piece and all(c in inverse for c in piece):
        return bytes_text(bytes(inverse[c] for c in piece))
    return decoded  # the vocabulary itself holds U+FFFD: show it as it is
