"""Benchmark: time and peak memory of attribution at scale, with chunks.

A randomly initialised model of a given shape (``gpt2-small``: 12 layers, d_model 768, 12 heads,
vocabulary 50257; ``tiny`` for tests) with a random top-k SAE (``d_dict``, k 32) spliced in at
every layer's ``resid_post``; ``prompts`` random prompts of ``seq`` tokens, metric: the mean
next-token log-prob, mean ablation. Each configuration — attribution patching nodes, or IG nodes
(``steps``) plus IG edges between the kept nodes — runs in a fresh Python process, so its peak
resident memory (``ru_maxrss``) is its own; ``chunk`` prompts and ``step_chunk`` IG points (steps;
targets x steps for edges) per pass bound it. Reported: seconds and peak RSS per configuration,
and the RSS before tracing (the model and dictionaries: ~2 GB at gpt2-small with 12 SAEs of
6144). The peak is that of one pass of ``chunk x step_chunk`` rows (~120-150 MB a row at
gpt2-small and 64 tokens, mostly the 50257-way logits and the MLPs' saved activations), not of
the number of prompts or steps: ``chunk 2 x step_chunk 5`` stays within 4 GB.

    mechscope bench attribution --shape gpt2-small --prompts 8 32 --chunk 4
    mechscope bench attribution --shape gpt2-small --methods ig --edges --steps 10 --prompts 64 \
        --seq 64 --chunk 2 --step-chunk 5

Run a single configuration as ``python -m mechscope.apps.bench.attribution_memory '{json}'``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

SHAPES = {
    "gpt2-small": dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                       n_ctx=1024, act_fn="gelu_new", normalization_type="LN"),
    "tiny": dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=100, n_ctx=64,
                 act_fn="gelu_new", normalization_type="LN"),
}


def run_one(shape: str, prompts: int, seq: int, method: str, d_dict: int, steps: int,
            chunk: int | None, step_chunk: int | None, node_threshold: float = 0.02,
            edges: bool | None = None) -> dict[str, Any]:
    """One configuration in this process: seconds, peak RSS (MiB), nodes and edges kept.
    ``edges`` None: edges with IG only (AtP nodes alone otherwise)."""
    import torch

    from mechscope.circuits.attribution import Setup, next_token_logprob
    from mechscope.circuits.feature_circuits import feature_circuit
    from mechscope.interp.models import Model
    from mechscope.sae.config import TopKConfig
    from mechscope.sae.factory import build_dictionary

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    cfg = SHAPES[shape]
    model = Model.from_config(cfg, name=f"random-{shape}", seed=0)
    sites = {f"L{layer}.resid_post": build_dictionary(TopKConfig(
        d_in=cfg["d_model"], d_dict=d_dict, k=min(32, d_dict), site_in=f"L{layer}.resid_post"))
        for layer in range(cfg["n_layers"])}
    tokens = torch.randint(0, cfg["d_vocab"], (prompts, seq), generator=torch.Generator().manual_seed(0))
    setup = Setup.build(model, sites, next_token_logprob(tokens), tokens, ablation="mean")
    edges = method == "ig" if edges is None else edges
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    g = feature_circuit(setup, method=method, steps=steps, node_threshold=node_threshold,
                        relative=True, edges=edges, chunk=chunk, step_chunk=step_chunk)
    return {"shape": shape, "prompts": prompts, "seq": seq, "method": method, "d_dict": d_dict,
            "steps": steps if method == "ig" else None, "chunk": chunk, "step_chunk": step_chunk,
            "with_edges": edges, "node_threshold": node_threshold,
            "seconds": time.perf_counter() - t,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mib": base, "nodes": len(g.nodes), "edges": len(g.edges)}


def bench_attribution_memory(shape: str = "gpt2-small", prompts: Sequence[int] = (8, 32), seq: int = 64,
                             methods: Sequence[str] = ("atp", "ig"), d_dict: int = 6144, steps: int = 10,
                             chunk: int | None = 2, step_chunk: int | None = 5,
                             node_threshold: float = 0.02, edges: bool | None = None) -> list[dict[str, Any]]:
    """Each configuration in a fresh process (see module doc)."""
    rows = []
    for method in methods:
        for n in prompts:
            spec = dict(shape=shape, prompts=n, seq=seq, method=method, d_dict=d_dict, steps=steps,
                        chunk=chunk, step_chunk=step_chunk, node_threshold=node_threshold, edges=edges)
            out = subprocess.run([sys.executable, "-m", "mechscope.apps.bench.attribution_memory",
                                  json.dumps(spec)], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"benchmark configuration {spec} failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def format_memory(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<8}{'edges':>6}{'steps':>6}{'prompts':>8}{'seq':>6}{'chunk':>7}{'st.chunk':>9}"
             f"{'seconds':>10}{'peak RSS MiB':>14}{'before MiB':>12}{'nodes':>7}{'edges':>7}"]
    for r in rows:
        lines.append(f"{r['method']:<8}{'yes' if r['with_edges'] else 'no':>6}{str(r['steps'] or '-'):>6}"
                     f"{r['prompts']:>8}{r['seq']:>6}{str(r['chunk']):>7}{str(r['step_chunk']):>9}"
                     f"{r['seconds']:>10.1f}{r['peak_rss_mib']:>14.0f}{r['rss_before_mib']:>12.0f}"
                     f"{r['nodes']:>7}{r['edges']:>7}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run_one(**json.loads(sys.argv[1]))))
