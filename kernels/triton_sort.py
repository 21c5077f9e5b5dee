"""Bitonic top-k and merge on register tiles, for the fused encoder (`triton_encode`).

Batcher's bitonic network (Batcher 1968, "Sorting networks and their applications") on a
``[BM, BN]`` tile viewed as a hypercube ``[2] * (log2 BM + log2 BN)``: a compare-and-swap along
hypercube axis j puts the min of each pair of elements that differ only in bit j of the column
index on one side and the max on the other. Sorting blocks of K with alternating directions and
then repeatedly taking the element-wise max of neighbouring blocks (a bitonic sequence holding
the K largest of the pair; Shanbhag et al. 2018, "Efficient Top-K Query Processing on Massively
Parallel Hardware") and re-merging gives the row-wise top-K in
``log K (log K + 1) / 2 + (log BN - log K) log K`` compare-and-swap rounds.

Triton ships the same network (``tl.topk`` / ``tl.sort``), but its compare-and-swap finds the
partner with an ``xor_sum`` reduction, which ``TRITON_INTERPRET=1`` evaluates element by element
in Python (seconds per tile). Here the pair's min and max are ``tl.min`` / ``tl.max`` over the
size-2 axis, which the interpreter runs in NumPy and the compiler lowers to the same
intra-thread / shuffle exchange; that keeps the CPU parity tests fast.

All sizes are powers of two, passed as log2 constexprs. Rows are the outer hypercube axes and
are never mixed.
"""

from __future__ import annotations

from typing import no_type_check  # keeps jaxtyping's import hook off the jit sources

import triton
import triton.language as tl


@no_type_check
@triton.jit
def _indicator(ND: tl.constexpr, j: tl.constexpr):
    """0 / 1 along the j-th innermost of ND hypercube axes (broadcastable)."""
    return tl.reshape(tl.arange(0, 2), [1] * (ND - j - 1) + [2] + [1] * j)


@no_type_check
@triton.jit
def _compare_swap(h, flip, ND: tl.constexpr, j: tl.constexpr):
    lo = tl.min(h, axis=ND - 1 - j, keep_dims=True)
    hi = tl.max(h, axis=ND - 1 - j, keep_dims=True)
    return tl.where((flip ^ _indicator(ND, j)) != 0, hi, lo)


@no_type_check
@triton.jit
def _merge(h, ND: tl.constexpr, STAGE: tl.constexpr, ORDER: tl.constexpr):
    """Bitonic merge of blocks of 2**STAGE: ORDER 0 ascending, 1 descending, 2 alternating."""
    if ORDER == 2:
        flip = _indicator(ND, STAGE)
    else:
        flip = tl.full([1] * ND, ORDER, tl.int32)
    for i in tl.static_range(STAGE):
        h = _compare_swap(h, flip, ND, STAGE - 1 - i)
    return h


@no_type_check
@triton.jit
def topk_rows(x, LOG_BM: tl.constexpr, LOG_BN: tl.constexpr, LOG_K: tl.constexpr,
              DESCENDING: tl.constexpr):
    """The 2**LOG_K largest of each row of x [2**LOG_BM, 2**LOG_BN], sorted (LOG_K >= 1)."""
    ND: tl.constexpr = LOG_BM + LOG_BN
    h = tl.reshape(x, [2] * ND)
    for i in tl.static_range(1, LOG_K + 1):
        h = _merge(h, ND, i, 2 if i < LOG_BN else DESCENDING)
    for i in tl.static_range(LOG_K + 1, LOG_BN + 1):
        # neighbouring blocks are sorted in opposite directions: their max is bitonic
        h = tl.max(h, axis=ND - i)
        h = _merge(h, ND - i + LOG_K, LOG_K, 2 if i < LOG_BN else DESCENDING)
    return tl.reshape(h, [2**LOG_BM, 2**LOG_K])


@no_type_check
@triton.jit
def merge_topk_rows(keep, cand, LOG_BM: tl.constexpr, LOG_K: tl.constexpr):
    """Top-K of the union of two row-wise sorted lists: keep descending, cand ascending.

    Returns the result sorted descending.
    """
    h = tl.reshape(tl.maximum(keep, cand), [2] * (LOG_BM + LOG_K))
    h = _merge(h, LOG_BM + LOG_K, LOG_K, 1)
    return tl.reshape(h, [2**LOG_BM, 2**LOG_K])
