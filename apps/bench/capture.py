"""Benchmark: capturing one mid-depth site with early stop vs TransformerLens ``run_with_cache``.

Both sides run the same model on the same tokens in the same process, alternating, and the
medians of ``repeats`` timings are compared. ``run_with_cache`` (all hooks) is TransformerLens'
usual way to read activations; `capture` hooks only the sites asked for and stops after the last
block it needs.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

GPT2_SMALL = dict(n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12, d_mlp=3072,
                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN")


def bench_capture(model: Any = None, site: str | None = None, batch: int = 8, seq: int = 128,
                  repeats: int = 5, quick: bool = False) -> dict[str, Any]:
    """Tokens/s of `capture` at one mid-depth site vs ``run_with_cache``; returns a result dict.

    ``model`` defaults to a randomly initialised GPT-2-small-shaped model (speed only depends
    on shapes); ``quick`` shrinks everything to a seconds-long smoke run.
    """
    from mechscope.interp.capture import capture
    from mechscope.interp.models import Model

    if model is None:
        cfg = dict(GPT2_SMALL, n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=256, d_vocab=500) if quick else GPT2_SMALL
        model = Model.from_config(cfg, name="gpt2-small-shape (random weights)" if not quick else "tiny")
    if quick:
        batch, seq, repeats = 2, 16, 2
    site = site or f"L{model.n_layers // 2 - 1 if model.n_layers > 1 else 0}.resid_post"
    tokens = torch.randint(0, model.d_vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    t_capture, t_cache = [], []
    with torch.no_grad():
        capture(model, tokens, site)  # warm-up both paths
        model.tl.run_with_cache(tokens)
        for _ in range(repeats):
            t0 = time.perf_counter()
            ours = capture(model, tokens, site)
            t1 = time.perf_counter()
            _, cache = model.tl.run_with_cache(tokens)
            t2 = time.perf_counter()
            t_capture.append(t1 - t0)
            t_cache.append(t2 - t1)
    site_obj = model.site(site)
    torch.testing.assert_close(ours[site_obj], cache[site_obj.hook_name])  # same numbers, or no claim
    n = batch * seq
    med_ours, med_tl = statistics.median(t_capture), statistics.median(t_cache)
    return dict(model=model.name, site=str(site_obj), tokens=n, repeats=repeats,
                threads=torch.get_num_threads(), capture_tok_s=n / med_ours,
                run_with_cache_tok_s=n / med_tl, speedup=med_tl / med_ours)


def format_capture(r: dict[str, Any]) -> str:
    return (
        f"capture benchmark: {r['model']}, site {r['site']}, {r['tokens']} tokens/forward, "
        f"median of {r['repeats']}, torch threads {r['threads']}\n"
        f"  mechscope capture (early stop):   {r['capture_tok_s']:10.0f} tok/s\n"
        f"  TransformerLens run_with_cache:   {r['run_with_cache_tok_s']:10.0f} tok/s\n"
        f"  ratio capture / run_with_cache:   {r['speedup']:10.2f}x"
    )
