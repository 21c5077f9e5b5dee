"""Benchmark: tokens/s of a top-k SAE training step, mechscope vs SAELens (vs sparsify), same run.

Shape (the default): d_in 512, d_sae 8192, k 32, batch 4096, fp32, Adam. Every implementation
trains for the same number of steps on the same batches (planted-feature data) and is then
scored by FVU on one held-out batch. Also reported: each step's time as a multiple of one dense
encoder matmul ``x @ W_encᵀ`` at the same shape, the floor any encoder that scores every latent
must pay. Timings are medians over the timed steps after one warm-up step.

SAELens is timed on its own training step (``TopKTrainingSAE.training_forward_pass``, backward,
gradient clipping to norm 1 and Adam, as its ``SAETrainer`` does per step, without logging).
sparsify (``eai-sparsify``) is only timed if importable: its step is its trainer's (decoder
renormalised, FVU loss, backward, parallel gradient removed, Adam), with its eager embedding-bag
decoder on CPU. Each row records the 1-minute load average it started under (shared machines).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mechscope.sae.config import RunConfig, TopKConfig, TrainConfig
from mechscope.sae.synthetic import PlantedSource


def _median_time(fn: Callable[[int], Any], steps: int, warmup: int = 1) -> float:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(warmup, warmup + steps):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def _mechscope(batches, held, d_in, d_sae, k, lr, steps):
    from mechscope.sae.trainer import Run, train_step

    cfg = RunConfig(TopKConfig(d_in=d_in, d_dict=d_sae, k=k),
                    TrainConfig(lr=lr, steps=steps + 1, decay_fraction=0.0, progress=False, dead_tokens=10**12))
    run = Run.new(cfg, ".")
    run.model.init_from_data(batches[0], batches[0])
    t = _median_time(lambda i: train_step(run, batches[i], batches[i], i), steps)
    with torch.no_grad():
        return t, _fvu(held, run.model(held))


def _sae_lens(batches, held, d_in, d_sae, k, lr, steps):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    coeffs = {name: getattr(c, "value", c) for name, c in sae.get_coefficients().items()}
    dead = torch.zeros(d_sae, dtype=torch.bool)

    def step(i):
        out = sae.training_forward_pass(TrainStepInput(batches[i], coeffs, dead, i, False))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()

    t = _median_time(step, steps)
    with torch.no_grad():
        return t, _fvu(held, sae(held))


def _sparsify(batches, held, d_in, d_sae, k, lr, steps):
    import os

    # its Triton decoder needs a GPU; on CPU sparsify's own eager embedding-bag path is the one
    # its trainer would use
    if not torch.cuda.is_available():
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    from sparsify import SparseCoder, SparseCoderConfig  # not a dependency: skipped when absent

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k))
    with torch.no_grad():
        sae.b_dec.copy_(batches[0].mean(0))  # as its trainer does on the first batch
    opt = torch.optim.Adam(sae.parameters(), lr=lr)

    def step(i):  # one step of sparsify.Trainer (fvu loss, no aux-k), without logging
        sae.set_decoder_norm_to_unit_norm()
        out = sae(batches[i])
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()

    t = _median_time(step, steps)
    with torch.no_grad():
        sae.set_decoder_norm_to_unit_norm()
        return t, _fvu(held, sae(held).sae_out)


def bench_train(steps: int = 5, quick: bool = False, d_in: int = 512, d_sae: int = 8192, k: int = 32,
                batch: int = 4096, lr: float | int = 1e-3, threads: int | None = None) -> list[dict[str, Any]]:
    """One row per implementation: tokens/s, step time, step/matmul ratio, FVU, speed-up vs SAELens.

    ``quick`` shrinks the shape 4x per axis and uses 2 timed steps (a smoke run); ``threads``
    sets torch's intra-op threads for the whole benchmark (restored afterwards).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _bench(steps, quick, d_in, d_sae, k, batch, lr)
    finally:
        torch.set_num_threads(before)


def _bench(steps, quick, d_in, d_sae, k, batch, lr):
    if quick:
        d_in, d_sae, batch, steps = d_in // 4, d_sae // 4, batch // 4, min(steps, 2)
    src = PlantedSource(d=d_in, n_features=2 * d_sae, batch_size=batch, mean_active=2 * k, seed=0)
    batches = [src.batch(i) for i in range(steps + 1)]
    held = src.batch(10**6)
    W = torch.randn(d_sae, d_in) / d_in**0.5
    t_mm = _median_time(lambda i: batches[i] @ W.T, steps)
    rows = []
    for name, fn in (("mechscope", _mechscope), ("sae_lens", _sae_lens), ("sparsify", _sparsify)):
        load = os.getloadavg()[0]  # the machine is shared: the load each side ran under
        try:
            t, f = fn(batches, held, d_in, d_sae, k, lr, steps)
        except ImportError as e:
            rows.append({"impl": name, "skipped": f"not installed ({e.name})"})
            continue
        rows.append({"impl": name, "version": _version(name), "step_s": t, "tokens_per_s": batch / t,
                     "step_over_matmul": t / t_mm, "fvu": f, "steps": steps, "load_1min": load})
    for other in ("sae_lens", "sparsify"):
        base = next((r for r in rows if r["impl"] == other and "tokens_per_s" in r), None)
        for r in rows:
            if base is not None and "tokens_per_s" in r:
                r[f"speedup_vs_{other}"] = r["tokens_per_s"] / base["tokens_per_s"]
    shape = {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch, "matmul_s": t_mm,
             "threads": torch.get_num_threads()}
    return [{**shape, **r} for r in rows]


def _version(impl: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"mechscope": "mechscope", "sae_lens": "sae-lens", "sparsify": "eai-sparsify"}[impl]
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def format_bench(rows: list[dict[str, Any]]) -> str:
    r0 = rows[0]
    lines = [f"top-k SAE training step: d_in {r0['d_in']}, d_sae {r0['d_sae']}, k {r0['k']}, "
             f"batch {r0['batch']}, fp32, Adam, {r0['threads']} threads; dense encoder matmul "
             f"{r0['matmul_s'] * 1e3:.0f} ms",
             f"{'impl':<10} {'version':>8} {'tokens/s':>9} {'step ms':>8} {'x matmul':>9} {'FVU':>6} "
             f"{'vs SAELens':>10} {'vs sparsify':>11} {'load':>5}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['impl']:<10} skipped: {r['skipped']}")
            continue
        nan = float("nan")
        lines.append(f"{r['impl']:<10} {r['version']:>8} {r['tokens_per_s']:>9.0f} {r['step_s'] * 1e3:>8.0f} "
                     f"{r['step_over_matmul']:>9.2f} {r['fvu']:>6.3f} {r.get('speedup_vs_sae_lens', nan):>9.2f}x "
                     f"{r.get('speedup_vs_sparsify', nan):>10.2f}x {r['load_1min']:>5.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    args = sys.argv[1:]
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else None
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 5
    print(format_bench(bench_train(steps=steps, quick="--quick" in args, threads=threads)))
