"""Triton sparse decoder (forward and backward) and the sparse products the encoder backward uses.

The code ``(w, idx) : [n, k]`` stands for ``S [n, m]`` with ``S[r, idx[r, j]] += w[r, j]``
(see `mechscope.kernels.sparse_ops`, whose eager versions these kernels must match):

* `bag_matmul_triton`  ``S W (+ b)``: program (row block, column block) accumulates
  ``Σ_j w[r, j] W[idx[r, j], cols]`` in fp32; one gathered ``[BLOCK_M, BLOCK_D]`` tile per j.
  Decoder forward and the encoder's ``grad_x``.
* `gather_dot_triton`  ``<y[r], W[idx[r, j]]>``: program (row, block of j) walks d in
  ``BLOCK_D`` chunks. Gradient of the decoder w.r.t. the code values.
* `bag_scatter_triton` ``Sᵀ y``: program (row block, column block) loads its ``y`` tile once
  and, for each j, atomically adds ``w[r, j] · y[r, cols]`` into row ``idx[r, j]`` of an fp32
  buffer. ``grad_W_dec`` and ``grad_W_enc``. Atomics make the summation order (and so the last
  bits) run-dependent; rows no code selected stay exactly 0.

Preconditions: ``idx`` int64 in ``[0, m)`` (checked by `dispatch`), float32/float16/bfloat16
values (fp32 accumulation); inputs are made contiguous (a no-op when they already are).
"""

from __future__ import annotations

from typing import no_type_check  # keeps jaxtyping's import hook off the jit sources

import torch
import triton
import triton.language as tl
from torch import Tensor

from mechscope.kernels.reference import sparse_decode_function

BLOCK_M = 32
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_D = 128


@no_type_check
@triton.jit
def _bag_matmul_kernel(idx_ptr, w_ptr, W_ptr, b_ptr, out_ptr, n, k, d,
                       HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < n
    col_ok = cols < d
    mask = row_ok[:, None] & col_ok[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for j in range(0, k):
        i = tl.load(idx_ptr + rows * k + j, mask=row_ok, other=0)
        v = tl.load(w_ptr + rows * k + j, mask=row_ok, other=0.0).to(tl.float32)
        t = tl.load(W_ptr + i[:, None] * d + cols[None, :], mask=mask, other=0.0)
        acc += v[:, None] * t.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * d + cols[None, :], acc, mask=mask)


@no_type_check
@triton.jit
def _gather_dot_kernel(idx_ptr, W_ptr, y_ptr, out_ptr, k, d,
                       BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    js = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    j_ok = js < k
    i = tl.load(idx_ptr + r * k + js, mask=j_ok, other=0)
    acc = tl.zeros((BLOCK_J,), dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < d
        yv = tl.load(y_ptr + r * d + cols, mask=col_ok, other=0.0).to(tl.float32)
        t = tl.load(W_ptr + i[:, None] * d + cols[None, :],
                    mask=j_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(t.to(tl.float32) * yv[None, :], axis=1)
    tl.store(out_ptr + r * k + js, acc, mask=j_ok)


@no_type_check
@triton.jit
def _bag_scatter_kernel(idx_ptr, w_ptr, y_ptr, out_ptr, n, k, d,
                        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < n
    mask = row_ok[:, None] & (cols < d)[None, :]
    yt = tl.load(y_ptr + rows[:, None] * d + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    for j in range(0, k):
        i = tl.load(idx_ptr + rows * k + j, mask=row_ok, other=0)
        v = tl.load(w_ptr + rows * k + j, mask=row_ok, other=0.0).to(tl.float32)
        tl.atomic_add(out_ptr + i[:, None] * d + cols[None, :], v[:, None] * yt, mask=mask)


def _block_d(d: int) -> int:
    return min(BLOCK_D, max(16, triton.next_power_of_2(d)))


def bag_matmul_triton(idx: Tensor, w: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
    """``S W (+ b)`` as ``[n, d]`` in W's dtype."""
    idx, w, W = idx.contiguous(), w.contiguous(), W.contiguous()
    (n, k), d = idx.shape, W.shape[1]
    out = torch.empty(n, d, dtype=W.dtype, device=W.device)
    if n:
        bd = _block_d(d)
        bias = b.contiguous() if b is not None else W  # dummy pointer when HAS_BIAS is off
        _bag_matmul_kernel[(triton.cdiv(n, BLOCK_M), triton.cdiv(d, bd))](
            idx, w, W, bias, out, n, k, d, HAS_BIAS=b is not None, BLOCK_M=BLOCK_M, BLOCK_D=bd)
    return out


def gather_dot_triton(idx: Tensor, W: Tensor, y: Tensor) -> Tensor:
    """``<y[r], W[idx[r, j]]>`` as ``[n, k]`` fp32."""
    idx, W, y = idx.contiguous(), W.contiguous(), y.contiguous()
    (n, k), d = idx.shape, W.shape[1]
    out = torch.empty(n, k, dtype=torch.float32, device=W.device)
    if n:
        bj = min(64, max(16, triton.next_power_of_2(k)))
        _gather_dot_kernel[(n, triton.cdiv(k, bj))](
            idx, W, y, out, k, d, BLOCK_J=bj, BLOCK_D=_block_d(d))
    return out


def bag_scatter_triton(idx: Tensor, w: Tensor, y: Tensor, m: int) -> Tensor:
    """``Sᵀ y`` as ``[m, d]`` in y's dtype (accumulated in fp32)."""
    idx, w, y = idx.contiguous(), w.contiguous(), y.contiguous()
    (n, k), d = idx.shape, y.shape[1]
    out = torch.zeros(m, d, dtype=torch.float32, device=y.device)
    if n:
        bd = _block_d(d)
        _bag_scatter_kernel[(triton.cdiv(n, BLOCK_M), triton.cdiv(d, bd))](
            idx, w, y, out, n, k, d, BLOCK_M=BLOCK_M, BLOCK_D=bd)
    return out.to(y.dtype)


def _decode_triton(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    return bag_matmul_triton(indices, values, W_dec, b_dec)


SparseDecodeTriton = sparse_decode_function(
    "SparseDecodeTriton", _decode_triton, gather_dot_triton, bag_scatter_triton)


def sparse_decode_triton(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """x_hat from the Triton kernels; inputs validated by `dispatch`."""
    return SparseDecodeTriton.apply(values, indices, W_dec, b_dec)
