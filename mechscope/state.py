"""Nested states with tensors (data-source positions, shuffle buffers, RNG states) in one
safetensors file, without pickling: the one implementation of that for checkpoints and for
resumable cache builds.

`split_tensors` turns a JSON-like object holding tensors into a JSON-able copy with every tensor
replaced by ``{"__tensor__": key}`` and the tensors collected by key (CPU copies: a state holds no
device); `join_tensors` undoes it. `save_state` / `load_state` write and read such an object
atomically (`mechscope.files.atomic_path`), the JSON in the safetensors header metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mechscope.files import atomic_path

_TENSOR = "__tensor__"
_KEY = "mechscope.state"


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy (saved states carry no device)."""
    return t.detach().to("cpu", copy=True).contiguous()


def split_tensors(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = cpu_copy(obj)
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {k: split_tensors(v, f"{key}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save_state(path: "str | Path", obj: Any) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta = split_tensors(obj, "s", tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_KEY: json.dumps(meta)})


def load_state(path: "str | Path") -> Any:
    """The object `save_state` wrote, tensors on the CPU; ValueError if unreadable."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})[_KEY])
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise ValueError(f"{path} is not a readable mechscope state file ({type(e).__name__}: {e})") from None
    return join_tensors(meta, tensors)
