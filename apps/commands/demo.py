"""``mechscope demo``: the main job, end to end on the default zoo model, offline.

Train a top-k SAE at one residual site of ``gpt2-shakespeare`` on the Shakespeare corpus,
evaluate it on held-out plays (FVU, L0, dead latents, CE loss recovered), save it as an
SAELens-compatible folder, compute feature cards over held-out text and write the offline
feature browser.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

from mechscope.apps.cli import command
from mechscope.files import write_text
from mechscope.apps.commands.common import device_options

DEMO_SAE = dict(architecture="topk", site_in="L2.resid_pre", d_dict=1024, k=16, steps=600, lr=1e-3,
                warmup_steps=50, log_every=20)
QUICK_SAE = dict(DEMO_SAE, d_dict=256, k=8, steps=6, warmup_steps=0, log_every=2)


def run_demo(out_dir: "str | Path" = "runs/demo", quick: bool = False, browser_tokens: int = 32768,
             progress: bool = True, device: str = "auto", dtype: str = "float32") -> dict[str, Any]:
    """Run the demo; returns the paths written and the evaluation row. ``quick``: seconds."""
    from mechscope.apps.browser import build_feature_browser
    from mechscope.interp import zoo
    from mechscope.interp.models import load_model
    from mechscope.sae.io import load_dictionary
    from mechscope.apps.commands.train import DataConfig, load_job, run_job
    from mechscope.interp.tokens import open_token_stream

    t0 = time.perf_counter()
    out = Path(out_dir)
    data = dict(model=zoo.DEFAULT, n_ctx=128, batch_tokens=4096, eval_windows=256, device=device, model_dtype=dtype)
    if quick:
        data.update(n_ctx=32, batch_tokens=256, shuffle_buffer=1024, model_batch_size=8, eval_windows=8)
        browser_tokens = min(browser_tokens, 2048)
    sae = QUICK_SAE if quick else DEMO_SAE
    overrides = [f"data.{k}={json.dumps(v)}" for k, v in data.items()]
    overrides += [f"sae.{k}={json.dumps(v)}" for k, v in sae.items()]
    job = load_job(None, overrides)
    row = run_job(job, out, resume=False, progress=progress)[0].row()
    sae_dir = out / "runs" / row["run"] / "dictionary"

    model = load_model(job.data.model, device=job.data.device, dtype=job.data.model_dtype)
    dictionary = load_dictionary(sae_dir).to(model.device)  # from disk: what a user gets
    d: DataConfig = job.data
    windows = itertools.islice(open_token_stream(d.heldout_text, d.n_ctx, model, epochs=1), browser_tokens // d.n_ctx + 1)
    index = build_feature_browser(model, dictionary, sae["site_in"], windows, browser_tokens, out / "browser",
                                  title=f"{model.name} · {sae['site_in']} · top-k SAE",
                                  dictionary_name=f"{model.name} {sae['site_in']} top-k")
    result = {"sae_dir": str(sae_dir), "metrics": str(out / "results.json"), "browser": str(index),
              "seconds": round(time.perf_counter() - t0, 1), **row}
    write_text(out / "demo.json", json.dumps(result, indent=2))
    return result


def format_demo(r: dict[str, Any]) -> str:
    return "\n".join([
        f"demo finished in {r['seconds']} s",
        f"  FVU {r['eval_fvu']:.3f}   L0 {r['eval_l0']:.1f}   dead {100 * r['eval_dead_fraction']:.1f}%   "
        f"CE loss recovered {r['eval_ce_loss_recovered']:.3f}   "
        f"(loss clean {r['eval_loss_clean']:.3f}, spliced {r['eval_loss_spliced']:.3f}, zero {r['eval_loss_zero']:.3f})",
        f"  SAE folder (SAELens-compatible): {r['sae_dir']}",
        f"  metrics:                         {r['metrics']}",
        f"  feature browser:                 {r['browser']}",
    ])


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run with a tiny SAE")
    device_options(p)


@command("demo", "The main job: train, evaluate, save and browse a top-k SAE on the default zoo model.", _demo_options)
def demo_cmd(args: argparse.Namespace) -> int:
    print(format_demo(run_demo(args.out, quick=args.quick, device=args.device, dtype=args.dtype)))
    return 0
