"""State-dict checks: the one comparison of loaded tensors with the names and shapes expected.

A file of weights (safetensors, a checkpoint) is read into ``{name: tensor}`` and compared with
what the code expects, either shapes derived from a config or a module's own ``state_dict()``.
Every difference is reported at once, in one error that names the file: the missing keys, the
unexpected ones and each shape mismatch, so a wrong file is diagnosed in one attempt rather than
one key at a time (``nn.Module.load_state_dict`` names no file, and stops at shapes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

Shapes = Mapping[str, "tuple[int, ...] | torch.Size | Tensor"]
SHOWN = 8  # keys listed per kind of difference before "... and N more"


class StateDictError(ValueError):
    """Loaded tensors whose names or shapes differ from those expected."""


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if isinstance(v, Tensor) else tuple(int(d) for d in v)


def _listed(keys: list[str]) -> str:
    more = f" ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(repr(k) for k in keys[:SHOWN]) + more


def state_dict_problems(tensors: Mapping[str, Tensor], expected: Shapes, *,
                        allow_unexpected: bool = False) -> list[str]:
    """The differences, one sentence each (empty when ``tensors`` fit ``expected``)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = [] if allow_unexpected else sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {_listed(missing)} (has {_listed(sorted(tensors))})")
    if unexpected:
        problems.append(f"unexpected tensor(s) {_listed(unexpected)}")
    for key in sorted(set(expected) & set(tensors)):
        got, want = _shape(tensors[key]), _shape(expected[key])
        if got != want:
            problems.append(f"tensor {key!r} has shape {got}, expected {want}")
    return problems


def check_state_dict(tensors: Mapping[str, Tensor], expected: "Shapes | nn.Module",
                     where: "str | os.PathLike", *, allow_unexpected: bool = False,
                     error: type[Exception] = StateDictError) -> None:
    """Raise ``error`` naming ``where`` and every difference between ``tensors`` and ``expected``
    (shapes, tensors, or a module whose ``state_dict()`` is the expectation)."""
    if isinstance(expected, nn.Module):
        expected = expected.state_dict()
    problems = state_dict_problems(tensors, expected, allow_unexpected=allow_unexpected)
    if problems:
        raise error(f"{os.fspath(where)}: " + "; ".join(problems))


def load_checked(module: nn.Module, tensors: Mapping[str, Tensor], where: "str | os.PathLike", *,
                 error: type[Exception] = StateDictError) -> None:
    """``module.load_state_dict(tensors)`` after `check_state_dict` (an error names the file)."""
    check_state_dict(tensors, module, where, error=error)
    module.load_state_dict(dict(tensors))


__all__ = ["StateDictError", "check_state_dict", "load_checked", "state_dict_problems"]
