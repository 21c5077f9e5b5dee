"""Benchmark: top-k encoder and encode+decode training step, dense baseline vs reference vs Triton.

For each shape ``(n, d_in, d_sae, k)`` and each implementation it measures the median wall time
of ``repeats`` runs (after one warm-up) and the peak memory allocated during one run:

* ``encode``: forward only. (a) ``dense``: ``addmm`` + ``relu`` + ``torch.topk``; (b)
  ``reference``: `topk_encode` eager path; (c) ``triton``: the fused kernel (CUDA only).
* ``train``: encode + decode + ``||x_hat - x||²`` + backward w.r.t. x and all weights. (a)
  ``dense``: the textbook autograd SAE (`mechscope.kernels.dense`); (b), (c) as above.

Ratios are against (a) measured in the same run: ``speedup = t_dense / t`` and
``mem_ratio = peak / peak_dense``. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA
and the `memory.PeakMemory` tracker on CPU (a separate, untimed run). The lead wires
`main` as ``mechscope bench kernels``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from mechscope.kernels.code import SparseCode
from mechscope.kernels.dense import dense_decode, dense_topk_encode
from mechscope.kernels.memory import PeakMemory
from mechscope.kernels.reference import sparse_decode_reference, topk_encode_reference

Shape = tuple[int, int, int, int]  # n, d_in, d_sae, k

GPU_SHAPES: list[Shape] = [
    (4096, 768, 32768, 32),
    (16384, 768, 131072, 32),
    (16384, 768, 131072, 128),
    (4096, 4096, 131072, 64),
    (16384, 4096, 65536, 128),
]
CPU_SHAPES: list[Shape] = [(2048, 768, 8192, 32), (2048, 512, 16384, 64), (4096, 512, 8192, 32)]
QUICK_SHAPES: list[Shape] = [(256, 64, 1024, 16)]


def _impls(device: torch.device) -> dict[str, tuple[Callable, Callable]]:
    """name -> (encode(x, W, b, k) -> (values, indices), decode(values, indices, W, b))."""
    impls = {
        "dense": (lambda x, W, b, k: dense_topk_encode(x, W, b, k), dense_decode),
        "reference": (topk_encode_reference, sparse_decode_reference),
    }
    if device.type == "cuda":
        from mechscope.kernels.triton_decode import sparse_decode_triton
        from mechscope.kernels.triton_encode import topk_encode_triton

        impls["triton"] = (topk_encode_triton, sparse_decode_triton)
    return impls


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, int]:
    """(median seconds, peak bytes allocated above the starting point)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with PeakMemory() as pm:
            fn()
        peak = pm.peak
    return statistics.median(times), peak


def _cases(shape: Shape, device: torch.device, dtype: torch.dtype, impls: dict):
    n, d_in, d_sae, k = shape
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d_in, device=device, dtype=dtype, generator=g)
    W_enc = (torch.randn(d_sae, d_in, device=device, generator=g) / d_in**0.5).to(dtype)
    b_enc = torch.zeros(d_sae, device=device, dtype=dtype)
    W_dec = W_enc.detach().clone()
    b_dec = torch.zeros(d_in, device=device, dtype=dtype)
    params = [W_enc, b_enc, W_dec, b_dec]
    for name, (enc, dec) in impls.items():

        def encode(enc=enc):
            with torch.no_grad():
                return enc(x, W_enc, b_enc, k)

        def train(enc=enc, dec=dec):
            for p in params:
                p.requires_grad_(True)
                p.grad = None
            values, indices = enc(x, W_enc, b_enc, k)
            x_hat = dec(values, indices, W_dec, b_dec)
            (x_hat - x).pow(2).sum().backward()

        yield name, "encode", encode
        yield name, "train", train


def bench_kernels(
    shapes: list[Shape] | None = None,
    repeats: int = 5,
    device: str | torch.device | None = None,
    quick: bool = False,
    dtype: torch.dtype | None = None,
) -> list[dict]:
    """One row per (shape, pass, implementation); see the module docstring for the columns.

    Defaults: CUDA if available; shapes `GPU_SHAPES` on CUDA, the smaller `CPU_SHAPES` on CPU
    (~1 minute on 2 cores), `QUICK_SHAPES` with 2 repeats when ``quick``; dtype bfloat16 on
    CUDA, float32 on CPU.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if shapes is None:
        shapes = QUICK_SHAPES if quick else (GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES)
    repeats = min(repeats, 2) if quick else repeats
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    impls = _impls(dev)
    rows = []
    for shape in shapes:
        base: dict[str, tuple[float, int]] = {}
        for name, pass_, fn in _cases(shape, dev, dtype, impls):
            t, peak = _measure(fn, dev, repeats)
            if name == "dense":
                base[pass_] = (t, peak)
            t0, p0 = base[pass_]
            n, d_in, d_sae, k = shape
            rows.append(dict(
                n=n, d_in=d_in, d_sae=d_sae, k=k, device=str(dev), dtype=str(dtype).split(".")[-1],
                threads=torch.get_num_threads(), pass_=pass_, impl=name, median_s=t,
                peak_mib=peak / 2**20, speedup=t0 / t, mem_ratio=peak / max(p0, 1),
            ))
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table of `bench_kernels` rows, with a header saying what ran where."""
    if not rows:
        return "(no rows)"
    r0 = rows[0]
    head = [f"device {r0['device']}, dtype {r0['dtype']}, torch threads {r0['threads']}"]
    if r0["device"] == "cpu":
        head.append("CPU: reduced default grid, reference only (Triton runs on CUDA); "
                    "speedup = t_dense / t, mem_ratio = peak / peak_dense, same run")
    cols = ["n", "d_in", "d_sae", "k", "pass_", "impl", "median_s", "peak_mib", "speedup",
            "mem_ratio"]
    fmt = {"median_s": "{:.4f}", "peak_mib": "{:.1f}", "speedup": "{:.2f}x",
           "mem_ratio": "{:.3f}"}
    cells = [[fmt.get(c, "{}").format(r[c]) for c in cols] for r in rows]
    names = [c.rstrip("_") for c in cols]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(names)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join(head + [line(names)] + [line(row) for row in cells])


def main(quick: bool = False, device: str | None = None, repeats: int = 5) -> list[dict]:
    """Run and print the table (what ``mechscope bench kernels`` calls)."""
    rows = bench_kernels(repeats=repeats, device=device, quick=quick)
    print(format_table(rows))
    return rows


__all__ = ["SparseCode", "bench_kernels", "format_table", "main"]
