"""Reading frozen dataclasses back from JSON / TOML mappings: the one check of their keys.

A mapping read from a file (a graph's metadata, a feature card, a training config) may carry a key
the dataclass does not have: a typo in a config, or a file written by another version. Silently
dropping it loses what the user asked for, so it is an error naming the unknown keys and every
valid one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def checked_fields(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``dict(data)`` after checking every key is a field of dataclass ``cls``.

    ``what`` names the record in the error, e.g. ``"graph metadata"``.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; valid: {', '.join(sorted(names))}")
    return dict(data)
