"""Public entry points: validate once, then run the Triton kernels or the eager reference.

Dispatch rule. ``MECHSCOPE_KERNELS`` (read at every call) is ``auto`` (default), ``reference``
or ``triton``:

* ``reference``: always the eager PyTorch reference (the kill switch);
* ``triton``: always Triton, also on CPU tensors, which requires ``TRITON_INTERPRET=1`` to be set
  before triton is first imported (how the CPU tests run the kernels);
* ``auto``: Triton for CUDA tensors when ``import triton`` works, the reference otherwise;
  inputs outside the Triton kernels' preconditions (float64, k > 128) also take the reference,
  where ``triton`` mode raises instead.

`available()` reports which path a call would take and why, without running anything.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from mechscope.kernels.code import SparseCode
from mechscope.kernels.reference import sparse_decode_reference, topk_encode_reference

ENV_VAR = "MECHSCOPE_KERNELS"
MODES = ("auto", "reference", "triton")


class KernelBackend(NamedTuple):
    """Which implementation runs for tensors on ``device``, and why."""

    backend: str  # "reference" or "triton"
    reason: str
    device: str
    mode: str  # value of MECHSCOPE_KERNELS ("auto" when unset)
    triton_version: str | None  # None when triton does not import
    cuda_available: bool
    interpret: bool  # kernels run in the Triton interpreter (TRITON_INTERPRET=1 at import)


@functools.lru_cache(maxsize=1)
def _triton_import() -> tuple[str | None, str]:
    """(version or None, error message); cached because importing triton takes ~1 s."""
    try:
        import triton
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return None, f"{type(e).__name__}: {e}"
    return triton.__version__, ""


def _interpreting() -> bool:
    """Kernels run in the Triton interpreter: TRITON_INTERPRET=1 was set when triton loaded."""
    import triton.language as tl

    on = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return on and type(tl.zeros).__name__ == "InterpretedFunction"


def _mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not valid; use one of {', '.join(MODES)}")
    return mode


def available(device: str | torch.device | None = None) -> KernelBackend:
    """Which path `topk_encode` / `sparse_decode` take for tensors on ``device``.

    ``device`` defaults to ``cuda`` when CUDA is available, else ``cpu``.
    """
    cuda = torch.cuda.is_available()
    dev = torch.device(device if device is not None else ("cuda" if cuda else "cpu"))
    mode = _mode()
    version, err = _triton_import() if mode != "reference" else (None, "not imported")
    interpret = version is not None and _interpreting()
    info = dict(device=str(dev), mode=mode, triton_version=version, cuda_available=cuda,
                interpret=interpret)
    if mode == "reference":
        return KernelBackend("reference", f"forced by {ENV_VAR}=reference", **info)
    if version is None:
        why = f"triton is not importable ({err})"
        if mode == "triton":
            raise RuntimeError(f"{ENV_VAR}=triton but {why}")
        return KernelBackend("reference", why, **info)
    if mode == "triton":
        if dev.type != "cuda" and not interpret:
            raise RuntimeError(
                f"{ENV_VAR}=triton on {dev.type} tensors needs the Triton interpreter: start the "
                "process with TRITON_INTERPRET=1 (it must be set before triton is imported), "
                "or use CUDA tensors"
            )
        return KernelBackend("triton", f"forced by {ENV_VAR}=triton", **info)
    if dev.type != "cuda":
        return KernelBackend("reference", f"tensors on {dev.type}, Triton runs on CUDA", **info)
    return KernelBackend("triton", f"CUDA tensors and triton {version}", **info)


def _use_triton(device: torch.device) -> bool:
    """`available(device).backend == "triton"`, without importing triton for CPU tensors."""
    if device.type != "cuda" and _mode() != "triton":
        return False
    return available(device).backend == "triton"


def _check_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> None:
    if x.ndim != 2 or W_enc.ndim != 2 or b_enc.ndim != 1:
        raise ValueError(
            f"topk_encode expects x [n, d_in], W_enc [d_sae, d_in], b_enc [d_sae]; got shapes "
            f"{tuple(x.shape)}, {tuple(W_enc.shape)}, {tuple(b_enc.shape)} (flatten batch dims)"
        )
    if W_enc.shape[1] != x.shape[1] or b_enc.shape[0] != W_enc.shape[0]:
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, W_enc {tuple(W_enc.shape)} (must be "
            f"[d_sae, d_in] = [*, {x.shape[1]}]), b_enc {tuple(b_enc.shape)} (must be [d_sae])"
        )
    _check_same(("x", x), ("W_enc", W_enc), ("b_enc", b_enc))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= W_enc.shape[0]:
        raise ValueError(f"k must be an int in [1, d_sae={W_enc.shape[0]}], got {k!r}")


def _check_same(*named: tuple[str, Tensor]) -> None:
    (n0, t0), rest = named[0], named[1:]
    if not t0.dtype.is_floating_point:
        raise TypeError(f"{n0} must be a floating-point tensor, got {t0.dtype}")
    for n, t in rest:
        if t.dtype != t0.dtype:
            raise TypeError(f"dtype mismatch: {n0} is {t0.dtype} but {n} is {t.dtype}")
        if t.device != t0.device:
            raise ValueError(f"device mismatch: {n0} is on {t0.device} but {n} is on {t.device}")


def _check_decode(code: SparseCode, W_dec: Tensor, b_dec: Tensor) -> None:
    v, i = code.values, code.indices
    if v.ndim != 2 or v.shape != i.shape:
        raise ValueError(
            f"code.values and code.indices must both be [n, k]; got {tuple(v.shape)}, "
            f"{tuple(i.shape)}"
        )
    if W_dec.ndim != 2 or b_dec.shape != (W_dec.shape[1],):
        raise ValueError(
            f"sparse_decode expects W_dec [d_sae, d_out], b_dec [d_out]; got "
            f"{tuple(W_dec.shape)}, {tuple(b_dec.shape)}"
        )
    if i.dtype != torch.int64:
        raise TypeError(f"code.indices must be int64, got {i.dtype}")
    _check_same(("W_dec", W_dec), ("b_dec", b_dec), ("code.values", v))
    if i.device != W_dec.device:
        raise ValueError(f"device mismatch: code.indices on {i.device}, W_dec on {W_dec.device}")
    if i.numel():
        lo, hi = int(i.min()), int(i.max())
        if lo < 0 or hi >= W_dec.shape[0]:
            raise IndexError(f"code.indices span [{lo}, {hi}], valid is [0, {W_dec.shape[0] - 1}]")


def topk_encode(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_sae d_in"],
    b_enc: Float[Tensor, "d_sae"],
    k: int,
    *,
    relu: bool = True,
) -> SparseCode:
    """Top-k SAE code: the k largest of ``act = relu(x @ W_enc.T + b_enc)`` per row.

    Returns ``SparseCode(values [n, k], indices [n, k] int64)``, values sorted descending (ties
    broken arbitrarily). ``relu=False`` ranks the raw pre-activations. Differentiable w.r.t.
    ``x``, ``W_enc`` and ``b_enc``; the backward touches only the k selected latents of each row
    (see `mechscope.kernels.reference` for the maths). Runs the Triton fused kernel on CUDA, the
    eager reference otherwise; inputs outside the kernel's preconditions (float64, k > 128; see
    `mechscope.kernels.triton_encode`) run the reference under ``auto`` and raise under
    ``MECHSCOPE_KERNELS=triton``.
    """
    _check_encode(x, W_enc, b_enc, k)
    if _use_triton(x.device):
        from mechscope.kernels import triton_encode

        why = triton_encode.check_preconditions(x, W_enc, k)
        if why is None:
            values, indices = triton_encode.topk_encode_triton(x, W_enc, b_enc, k, relu)
            return SparseCode(values, indices)
        if _mode() == "triton":
            raise ValueError(f"{why}; {ENV_VAR}=triton forbids falling back to the reference")
    values, indices = topk_encode_reference(x, W_enc, b_enc, k, relu)
    return SparseCode(values, indices)


def sparse_decode(
    code: SparseCode, W_dec: Float[Tensor, "d_sae d_out"], b_dec: Float[Tensor, "d_out"]
) -> Float[Tensor, "n d_out"]:
    """``x_hat[r] = sum_j code.values[r, j] * W_dec[code.indices[r, j]] + b_dec``.

    Differentiable w.r.t. ``code.values``, ``W_dec`` and ``b_dec``; no dense decoder matmul in
    the forward or the backward. ``code.values`` must have ``W_dec``'s dtype.
    """
    _check_decode(code, W_dec, b_dec)
    if _use_triton(W_dec.device):
        from mechscope.kernels import triton_decode

        if W_dec.dtype in triton_decode.DTYPES:
            return triton_decode.sparse_decode_triton(code.values, code.indices, W_dec, b_dec)
        if _mode() == "triton":
            raise ValueError(f"dtype {W_dec.dtype} is not supported by the Triton decoder "
                             f"(valid: {triton_decode.DTYPES})")
    return sparse_decode_reference(code.values, code.indices, W_dec, b_dec)
