"""Benchmark: reading one mid-depth site with `capture` vs TransformerLens used as an expert would.

The baseline is the best a skilled TransformerLens user writes to read one site:
``run_with_cache(tokens, names_filter=hook, stop_at_layer=L + 1)`` (only that hook cached, blocks
after ``L`` never run). A plain full forward pass without any hook is timed too, as the cost floor
of a pass that reads nothing. All three run on the same `HookedTransformer` and the same tokens in
one process, alternating, and the medians of ``repeats`` timings are compared; the captured values
are asserted equal to TransformerLens' before any number is reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

GPT2_SMALL = dict(n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12, d_mlp=3072,
                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN")
TINY = dict(GPT2_SMALL, n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=256, d_vocab=500)


def bench_capture(site: str | None = None, batch: int = 8, seq: int = 128, repeats: int = 5,
                  quick: bool = False) -> dict[str, Any]:
    """Tokens/s of `capture` at one mid-depth site vs the expert TransformerLens call.

    The model is a randomly initialised GPT-2-small-shaped `HookedTransformer` (speed depends only
    on shapes); ``quick`` shrinks everything to a seconds-long smoke run.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechscope.interp.capture import capture
    from mechscope.interp.models import Model

    if quick:
        batch, seq, repeats = 2, 16, 2
    torch.manual_seed(0)
    tl = HookedTransformer(HookedTransformerConfig(**(TINY if quick else GPT2_SMALL))).eval()
    model = Model(tl, "tiny" if quick else "gpt2-small-shape (random weights)")
    site_obj = model.site(site or f"L{max(model.n_layers // 2 - 1, 0)}.resid_post")
    hook, stop = site_obj.hook_name, site_obj.layer + 1
    tokens = torch.randint(0, model.d_vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"capture": [], "expert": [], "forward": []}
    with torch.no_grad():
        ours = capture(model, tokens, site_obj)  # warm-up, and the equality check
        _, cache = tl.run_with_cache(tokens, names_filter=hook, stop_at_layer=stop)
        torch.testing.assert_close(ours[site_obj], cache[hook])  # same numbers, or no claim
        for _ in range(repeats):
            for name, run in (("capture", lambda: capture(model, tokens, site_obj)),
                              ("expert", lambda: tl.run_with_cache(tokens, names_filter=hook, stop_at_layer=stop)),
                              ("forward", lambda: tl(tokens))):
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    n = batch * seq
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(model=model.name, site=str(site_obj), tokens=n, repeats=repeats,
                threads=torch.get_num_threads(), capture_tok_s=n / med["capture"],
                expert_tok_s=n / med["expert"], forward_tok_s=n / med["forward"],
                ratio_vs_expert=med["expert"] / med["capture"])


def format_capture(r: dict[str, Any]) -> str:
    return (
        f"capture benchmark: {r['model']}, site {r['site']}, {r['tokens']} tokens/forward, "
        f"median of {r['repeats']}, torch threads {r['threads']}\n"
        f"  mechscope capture (early stop):                         {r['capture_tok_s']:10.0f} tok/s\n"
        f"  TransformerLens run_with_cache(names_filter, stop_at):  {r['expert_tok_s']:10.0f} tok/s\n"
        f"  plain full forward pass, no hooks (reference):          {r['forward_tok_s']:10.0f} tok/s\n"
        f"  ratio capture / expert TransformerLens:                 {r['ratio_vs_expert']:10.2f}x"
    )
