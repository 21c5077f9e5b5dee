"""Parity of an encode/decode implementation against the dense autograd oracle (`dense`).

Ties make "the same indices" the wrong test: when several activations are equal (ReLU zeros,
duplicated encoder rows), any of them is a correct pick. So the check is split in two:

1. selection: the returned values equal the oracle's sorted top-k values, every returned index
   is distinct within its row and in range, and the dense activation at each returned index
   equals the returned value;
2. gradients: the oracle is re-run *through the implementation's own indices* — dense ``pre``,
   ``act.gather(indices)``, dense decode — and the loss ``<x_hat, R>`` (R fixed random) is
   differentiated by autograd. The selection is piecewise constant, so this is the true
   gradient at the chosen selection, and every gradient (x, W_enc, b_enc, values, W_dec,
   b_dec) must match the implementation's sparse backward.

Errors are reported relative to the oracle's largest magnitude, per quantity.
Usable on a GPU too: ``parity_errors(..., device="cuda")`` checks the Triton path there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mechscope.kernels.code import SparseCode
from mechscope.kernels.dense import dense_decode, dense_topk_encode


def random_sae(n, d_in, d_sae, d_out, *, dtype=torch.float32, device="cpu", seed=0, ties=False):
    """x, W_enc, b_enc, W_dec, b_dec as leaves with ``requires_grad``.

    ``ties=True`` makes every encoder row appear twice (exact ties in every row).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    W_enc = torch.randn(d_sae, d_in, generator=g, dtype=torch.float64) / d_in**0.5
    b_enc = torch.randn(d_sae, generator=g, dtype=torch.float64) * 0.1
    if ties:
        half = d_sae // 2
        W_enc[1::2], b_enc[1::2] = W_enc[0::2][:half], b_enc[0::2][:half]
    W_dec = torch.randn(d_sae, d_out, generator=g, dtype=torch.float64) / d_sae**0.5
    b_dec = torch.randn(d_out, generator=g, dtype=torch.float64) * 0.1
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, W_enc, b_enc, W_dec, b_dec)]


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) if b.numel() else 0.0


def parity_errors(
    encode: Callable[..., SparseCode],
    decode: Callable[..., Tensor],
    n: int,
    d_in: int,
    d_sae: int,
    k: int,
    *,
    d_out: int | None = None,
    relu: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    ties: bool = False,
) -> dict[str, float]:
    """Relative errors of ``encode``/``decode`` vs the dense oracle (see module docstring).

    Keys: ``values``, ``act_at_indices`` (selection), ``x_hat``, ``grad_x``, ``grad_W_enc``,
    ``grad_b_enc``, ``grad_values``, ``grad_W_dec``, ``grad_b_dec``; plus ``bad_indices``, the
    number of rows whose indices repeat or leave ``[0, d_sae)`` (must be 0).
    """
    d_out = d_in if d_out is None else d_out
    leaves = random_sae(n, d_in, d_sae, d_out, dtype=dtype, device=device, seed=seed, ties=ties)
    oracle = [t.detach().clone().requires_grad_() for t in leaves]
    R = torch.randn(n, d_out, generator=torch.Generator().manual_seed(seed + 1)).to(device, dtype)

    x, W_enc, b_enc, W_dec, b_dec = leaves
    code = encode(x, W_enc, b_enc, k, relu=relu)
    code.values.retain_grad()
    x_hat = decode(code, W_dec, b_dec)
    (x_hat * R).sum().backward()

    ox, oW_enc, ob_enc, oW_dec, ob_dec = oracle
    top_values, _ = dense_topk_encode(ox, oW_enc, ob_enc, k, relu)
    pre = ox @ oW_enc.t() + ob_enc
    act = torch.relu(pre) if relu else pre
    idx = code.indices
    o_values = act.gather(1, idx)
    o_values.retain_grad()
    o_x_hat = dense_decode(o_values, idx, oW_dec, ob_dec)
    (o_x_hat * R).sum().backward()

    srt = idx.sort(dim=1).values
    bad = (srt[:, 1:] == srt[:, :-1]).any(1) | (idx < 0).any(1) | (idx >= d_sae).any(1)
    return {
        "values": _rel(code.values.detach(), top_values.detach()),
        "act_at_indices": _rel(code.values.detach(), o_values.detach()),
        "x_hat": _rel(x_hat.detach(), o_x_hat.detach()),
        "grad_x": _rel(x.grad, ox.grad),
        "grad_W_enc": _rel(W_enc.grad, oW_enc.grad),
        "grad_b_enc": _rel(b_enc.grad, ob_enc.grad),
        "grad_values": _rel(code.values.grad, o_values.grad),
        "grad_W_dec": _rel(W_dec.grad, oW_dec.grad),
        "grad_b_dec": _rel(b_dec.grad, ob_dec.grad),
        "bad_indices": float(bad.sum()),
    }

