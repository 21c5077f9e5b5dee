"""Devices and dtypes by name, resolved once: what every entry point's ``device`` / ``dtype`` means.

``device``: ``"auto"`` (CUDA when ``torch.cuda.is_available()``, the CPU otherwise), ``"cpu"``,
``"cuda"``, ``"cuda:N"`` (also ``"mps"``), or a `torch.device`. A CUDA device that is not there is
an error here, not a failure deep inside the first matmul.

``dtype``: ``"float32"`` | ``"bfloat16"`` | ``"float16"`` (``"fp32"``/``"bf16"``/``"fp16"`` too), or a
`torch.dtype`. Model weights may use any; dictionary parameters default to float32, with
autocast for the half-precision matmuls (see `mechscope.sae.config.TrainConfig`).
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def check_device_name(spec: "str | torch.device") -> str:
    """Validate a device spelling without touching the hardware; returns it as a string."""
    text = str(spec)
    if text in ("auto", "cpu", "cuda", "mps", "meta"):
        return text
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise ValueError(f"device {text!r} is invalid: one of {', '.join(DEVICES)}")


def resolve_device(spec: "str | torch.device | None" = "auto") -> torch.device:
    """The `torch.device` a spec names; ``auto``/None = CUDA when present, else the CPU."""
    if isinstance(spec, torch.device):
        return spec
    text = check_device_name("auto" if spec is None else spec)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} asked for, but CUDA is not available here "
                             "(use device 'auto' or 'cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def check_dtype_name(spec: "str | torch.dtype", what: str = "dtype") -> str:
    """Canonical name (``float32``, ``bfloat16``, ``float16``) of a dtype spelling: a name, an alias
    (``fp32``, ``bf16``, ``fp16``, ``half``, ``float``), ``"torch.bfloat16"`` or a `torch.dtype`.
    The one parser of dtype names: ``what`` names the value in the error (``model dtype``)."""
    name = str(spec).removeprefix("torch.")
    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unsupported {what} {spec!r}; supported: {', '.join(DTYPES)} "
                         f"(or {', '.join(a for a in _ALIASES if a != 'float')})")
    return name


def resolve_dtype(spec: "str | torch.dtype | None", default: torch.dtype = torch.float32,
                  what: str = "dtype") -> torch.dtype:
    """The `torch.dtype` a spelling names (`check_dtype_name`); None = ``default``."""
    return default if spec is None else DTYPES[check_dtype_name(spec, what)]
