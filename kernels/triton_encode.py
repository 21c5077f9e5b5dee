"""Triton fused top-k encoder: matmul + bias + activation + streaming top-k in one kernel.

Each program owns ``BLOCK_M`` rows of ``x`` and one contiguous slice ("split") of the ``d_sae``
latents. It walks its slice in ``BLOCK_N``-wide tiles; for each tile it computes
``acc = x_tile W_tileᵀ + b`` in fp32 registers (``tl.dot`` over ``BLOCK_K`` chunks of d_in),
applies the ReLU, and folds the tile into a running top-K held in registers:

    keep   = sorted-descending running top-K                 [BLOCK_M, K]
    cand   = topk_K(tile)  (sorted ascending)                 [BLOCK_M, K]
    keep   = bitonic_merge(max(keep, cand))

``max(a, b)`` of a descending and an ascending length-K list is a bitonic sequence holding the K
largest of their union (Batcher 1968, the half-cleaner step of the bitonic merge), so one merge of
log2 K stages re-sorts it (the networks are in `triton_sort`). The pre-activation tile never leaves registers: the only memory
written is ``[n, splits, K]`` candidates (O(n·k)), which a final ``torch.topk`` over
``splits·K`` entries per row reduces to k. Splitting d_sae keeps all SMs busy when n is small.

Value and index travel together as one int64 key: the fp32 bit pattern ``b`` is mapped to an
order-preserving int32 (``b ^ ((b >> 31) & 0x7fffffff)``: negative floats have their magnitude
bits reversed) and placed in the high word, the latent index in the low word. Ordering keys
orders values (ties broken towards the larger index), and the value is recovered exactly.

Preconditions (checked by `check_preconditions`, clear errors otherwise):
* CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``);
* dtype float32, float16 or bfloat16, all three tensors the same; fp32 accumulation. fp32 uses
  IEEE products unless ``torch.backends.cuda.matmul.allow_tf32`` is on (then TF32, like the
  reference's ``addmm`` on the same device); half inputs are ranked by their fp32 accumulators,
  so near-ties may select differently from the reference's half-precision ``addmm``;
* ``1 <= k <= 128`` and ``k <= d_sae``: the running list has ``K = max(16, next_pow2(k))`` slots;
* ``d_sae < 2**31``; ``x`` and ``W_enc`` may be strided; ``b_enc`` is made contiguous.

Backward: the reference's (`mechscope.kernels.reference.topk_encode_function`), run on the Triton
sparse kernels of `mechscope.kernels.triton_decode` (``grad_x`` is a bag-matmul, ``grad_W_enc``
an atomic scatter), plus ``index_add_`` for ``grad_b_enc``.
"""

from __future__ import annotations

from typing import no_type_check  # keeps jaxtyping's import hook off the jit sources

import torch
import triton
import triton.language as tl
from torch import Tensor

from mechscope.kernels.reference import topk_encode_function
from mechscope.kernels.triton_decode import DTYPES, bag_matmul_triton, bag_scatter_triton
from mechscope.kernels.triton_sort import merge_topk_rows, topk_rows

MAX_K = 128
_MIN_KEY = -(2**63)


@no_type_check
@triton.jit
def _float_key(acc, cols):
    """int64 keys ordered like (acc, cols) lexicographically."""
    bits = acc.to(tl.int32, bitcast=True)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (bits.to(tl.int64) << 32) | cols.to(tl.int64)


@no_type_check
@triton.jit
def _topk_encode_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    n, d_in, d_sae, cols_per_split, n_splits,
    stride_xm, stride_xk, stride_wn, stride_wk,
    RELU: tl.constexpr, TF32: tl.constexpr, BLOCK_K: tl.constexpr,
    LOG_BM: tl.constexpr, LOG_BN: tl.constexpr, LOG_K: tl.constexpr,
):
    BLOCK_M: tl.constexpr = 2**LOG_BM
    BLOCK_N: tl.constexpr = 2**LOG_BN
    K: tl.constexpr = 2**LOG_K
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm  # int64: n * d_in may pass 2**31
    col_lo = pid_s * cols_per_split
    col_hi = tl.minimum(col_lo + cols_per_split, d_sae)
    keep = tl.full((BLOCK_M, K), -9223372036854775808, tl.int64)
    for c0 in range(col_lo, col_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < col_hi
        w_rows = w_ptr + cols.to(tl.int64)[None, :] * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, d_in, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < d_in
            xt = tl.load(x_rows + ks[None, :] * stride_xk,
                         mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            wt = tl.load(w_rows + ks[:, None] * stride_wk,
                         mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            if TF32:
                acc = tl.dot(xt, wt, acc, input_precision="tf32")
            else:
                acc = tl.dot(xt, wt, acc, input_precision="ieee")
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0)
        key = _float_key(acc, cols[None, :])
        key = tl.where(col_ok[None, :], key, -9223372036854775808)
        cand = topk_rows(key, LOG_BM, LOG_BN, LOG_K, 0)
        keep = merge_topk_rows(keep, cand, LOG_BM, LOG_K)
    offs = (rows.to(tl.int64)[:, None] * n_splits + pid_s) * K + tl.arange(0, K)[None, :]
    tl.store(out_ptr + offs, keep, mask=row_ok[:, None])


def _log2(v: int) -> int:
    assert v > 0 and v & (v - 1) == 0, f"{v} is not a power of two"
    return v.bit_length() - 1


def padded_k(k: int) -> int:
    return max(16, triton.next_power_of_2(k))


def check_preconditions(x: Tensor, W_enc: Tensor, k: int) -> str | None:
    """None when the kernel can run these inputs, else what is wrong (and what is valid)."""
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not supported by the Triton encoder (valid: {DTYPES})"
    if k > MAX_K:
        return f"k={k} > {MAX_K} is not supported by the Triton encoder (use k <= {MAX_K})"
    if W_enc.shape[0] >= 2**31:
        return f"d_sae={W_enc.shape[0]} must be < 2**31 for the Triton encoder"
    return None


def _config(n: int, d_sae: int, K: int, device: torch.device) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, splits, num_warps): a heuristic, untuned."""
    # the interpreter (CPU tensors) runs each sort network element-wise in Python: tiny tiles
    block_m = 16 if device.type != "cuda" else (64 if K <= 64 else 32)
    block_n = max(128, K)
    block_k = 32
    grid_m = triton.cdiv(n, block_m)
    n_tiles = triton.cdiv(d_sae, block_n)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        splits = max(1, min(n_tiles, (4 * sms) // max(grid_m, 1)))
    else:
        splits = 1
    return block_m, block_n, block_k, splits, 8 if block_m * block_n >= 8192 else 4


def topk_keys(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, relu: bool,
              splits: int | None = None, block_n: int | None = None) -> tuple[Tensor, Tensor]:
    """Forward only: (values [n, k] in x.dtype, indices [n, k] int64). ``splits``/``block_n``
    override the heuristic (tests use them to cover several splits and tiles)."""
    why = check_preconditions(x, W_enc, k)
    if why is not None:
        raise ValueError(why)
    n, d_in = x.shape
    d_sae = W_enc.shape[0]
    K = padded_k(k)
    bm, bn, bk, auto_splits, warps = _config(n, d_sae, K, x.device)
    bn = max(block_n or bn, K)
    splits = max(1, min(splits or auto_splits, triton.cdiv(d_sae, bn)))
    cols_per_split = triton.cdiv(triton.cdiv(d_sae, splits), bn) * bn
    splits = triton.cdiv(d_sae, cols_per_split)
    keys = torch.empty(n, splits, K, dtype=torch.int64, device=x.device)
    if n:
        tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
        _topk_encode_kernel[(triton.cdiv(n, bm), splits)](
            x, W_enc, b_enc.contiguous(), keys, n, d_in, d_sae, cols_per_split, splits,
            x.stride(0), x.stride(1), W_enc.stride(0), W_enc.stride(1),
            RELU=relu, TF32=tf32, BLOCK_K=bk, LOG_BM=_log2(bm), LOG_BN=_log2(bn),
            LOG_K=_log2(K), num_warps=warps,
        )
    keys = keys.view(n, splits * K)
    keys = keys.topk(k, dim=1, sorted=True).values if splits * K != k else keys
    hi = (keys >> 32).to(torch.int32)
    values = (hi ^ ((hi >> 31) & 0x7FFFFFFF)).view(torch.float32).to(x.dtype)
    return values, keys & 0xFFFFFFFF


TopKEncodeTriton = topk_encode_function(
    "TopKEncodeTriton", topk_keys, bag_matmul_triton, bag_scatter_triton)


def topk_encode_triton(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, relu: bool = True):
    """(values, indices) from the fused kernel; inputs validated by `dispatch`."""
    return TopKEncodeTriton.apply(x, W_enc, b_enc, k, relu)
