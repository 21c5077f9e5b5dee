"""Benchmark: end-to-end tokens/s of ``mechscope train`` (text → model forward → top-k SAE step).

Every number is training tokens (activation rows) per second of wall time, measured in one run on
the same model, tokens and SAE shape:

* ``mechscope``: `mechscope.apps.commands.train.run_job` from text (model forward with early
  stop, shuffle buffer, top-k SAE step), held-out evaluation excluded;
* ``sae_lens``: SAELens' own runner, ``LanguageModelSAETrainingRunner`` with ``override_model``
  (the same HookedTransformer) and ``override_dataset`` (the same token windows), no wandb,
  no checkpoints, its end-of-run evaluation included (it is part of ``run()``);
* ``mechscope_cache``: the same SAE trained from an activation cache of the same rows (the cache
  build is timed separately);
* ``8 sites, one forward`` vs ``8 single-site jobs``: dictionaries at resid_post of layers
  0..7 fed by one model pass vs eight jobs of one site each.

The model is GPT-2-small shaped (12 layers, d_model 768, 12 heads, context 128) with random
weights and the zoo's BPE vocabulary; ``quick`` shrinks everything to seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# ``shuffle``: the shuffle buffer of both sides, in batches
FULL = dict(n_layer=12, d_model=768, n_head=12, n_ctx=128, d_sae=768 * 8, k=32, batch=4096, steps=16,
            model_batch=16, shuffle=4)
QUICK = dict(n_layer=8, d_model=32, n_head=2, n_ctx=32, d_sae=128, k=4, batch=256, steps=3, model_batch=8,
             shuffle=4)


def _model_folder(out: Path, s: dict[str, int]) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from mechscope.interp import zoo

    src = zoo.model_dir("gpt2-shakespeare")
    vocab = json.loads((src / "config.json").read_text())["d_vocab"]
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=s["n_layer"], n_embd=s["d_model"], n_head=s["n_head"], vocab_size=vocab,
                     n_positions=max(s["n_ctx"], 128))
    GPT2LMHeadModel(cfg).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, out / f)
    return out


def _timed(fn) -> tuple[float, Any]:
    t = time.perf_counter()
    got = fn()
    return time.perf_counter() - t, got


def _token_file(folder: Path, s: dict[str, int], out: Path) -> Path:
    """The first documents of the zoo corpus, tokenised once (outside every timer) into a token
    memmap that both mechscope (``data.text``) and SAELens (its windows) read."""
    from transformers import AutoTokenizer

    from mechscope.interp import zoo
    from mechscope.interp.token_memmap import write_token_memmap

    docs, chars = [], 0
    for d in zoo.corpus_text("train").split("\n\n\n"):
        docs.append(d)
        chars += len(d)
        if chars > 8 * 4 * s["steps"] * s["batch"]:  # ~4 characters a token, 8 passes' worth
            break
    return write_token_memmap(out, docs, AutoTokenizer.from_pretrained(folder))


def _job(folder: Path, s: dict[str, int], sites: list[str], text: Path, **data: Any):
    from mechscope.apps.commands.train import load_job

    over = [f'data.model="{folder}"', f'data.text="{text}"', f'data.heldout_text="{text}"', f"data.n_ctx={s['n_ctx']}", f"data.batch_tokens={s['batch']}",
            f"data.shuffle_buffer={s['shuffle'] * s['batch']}", f"data.model_batch_size={s['model_batch']}",
            'data.device="auto"', "data.eval_windows=1", f"sae.site_in={json.dumps(sites)}",
            f"sae.d_dict={s['d_sae']}", f"sae.k={s['k']}", f"sae.steps={s['steps']}", "sae.progress=false",
            f"sae.log_every={s['steps']}", "sae.b_dec_init=\"mean\""]
    over += [f"data.{k}={json.dumps(v)}" for k, v in data.items()]
    return load_job(None, over)


def _train(job: Any, out: Path) -> float:
    """Seconds of training (the job without its held-out evaluation)."""
    import mechscope.apps.commands.train as train_mod

    real = train_mod.evaluate_on_heldout
    train_mod.evaluate_on_heldout = lambda model, dicts, *a, **k: [None] * len(dicts)
    try:
        return _timed(lambda: train_mod.run_job(job, out, resume=False, progress=False))[0]
    finally:
        train_mod.evaluate_on_heldout = real


def _sae_lens_windows(folder: Path, s: dict[str, int], text: Path) -> list[list[int]]:
    """The token windows SAELens reads (the same windows mechscope's stream reads), made once."""
    import itertools

    from mechscope.interp.models import load_model
    from mechscope.interp.tokens import open_token_stream

    model = load_model(folder, device="cpu")
    tokens = s["steps"] * s["batch"]
    n_windows = (tokens * 3) // s["n_ctx"] + 8 * s["model_batch"]  # its buffer reads ahead
    return [w.tolist() for w in itertools.islice(open_token_stream(str(text), s["n_ctx"], model), n_windows)]


def _sae_lens(folder: Path, s: dict[str, int], site: str, windows: list[list[int]], tmp: Path) -> float:
    """Seconds of SAELens' runner, including loading the model (as ``mechscope train`` does), not
    importing it (imported before the first round, as mechscope is)."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens import TopKTrainingSAEConfig

    from mechscope.interp.models import load_model

    t0 = time.perf_counter()
    model = load_model(folder, device="auto")
    tokens = s["steps"] * s["batch"]
    hook = model.site(site).hook_name
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=s["d_model"], d_sae=s["d_sae"], k=s["k"]),
        model_name="gpt2", hook_name=hook, dataset_path="", is_dataset_tokenized=True, streaming=False,
        context_size=s["n_ctx"], prepend_bos=False, training_tokens=tokens, train_batch_size_tokens=s["batch"],
        n_batches_in_buffer=max(2, s["shuffle"] * s["batch"] // s["n_ctx"]),  # as many rows as ours
        store_batch_size_prompts=s["model_batch"], device=str(model.device),
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=str(tmp / "ckpt"),
        output_path=None, n_eval_batches=1, eval_batch_size_prompts=1, verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_model=model.module,
                                            override_dataset=Dataset.from_dict({"input_ids": windows}))
    runner.run()
    return time.perf_counter() - t0


def bench_pipeline(quick: bool = False, out_dir: "str | Path | None" = None,
                   shape: dict[str, int] | None = None, n_sites: int = 8, repeats: int = 1) -> dict[str, Any]:
    """Tokens/s of each pipeline and the ratios (see the module docstring); ``shape`` overrides
    `FULL` / `QUICK` fields, ``n_sites`` the number of sites of the multi-site case. Each of the
    ``repeats`` rounds runs every case once, in the same order (so the two sides of every ratio
    are measured interleaved, under the same machine load); seconds are medians over the rounds,
    ``rounds`` keeps every round's seconds."""
    import statistics

    from mechscope.interp.cache import build_cache
    from mechscope.interp.models import load_model
    from mechscope.interp.tokens import open_token_stream

    s = {**(QUICK if quick else FULL), **(shape or {})}
    tmp = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="mechscope-bench-pipeline-"))
    folder = _model_folder(tmp / "model", s)
    text = _token_file(folder, s, tmp / "tokens.npy")
    windows = _sae_lens_windows(folder, s, text)
    tokens = s["steps"] * s["batch"]
    site, sites = f"L{s['n_layer'] // 2}.resid_post", [f"L{i}.resid_post" for i in range(n_sites)]
    model = load_model(folder, device="auto")
    res: dict[str, Any] = {"shape": s, "n_sites": n_sites, "tokens": tokens, "device": str(model.device),
                           "repeats": repeats}
    res["cache_build_s"] = _timed(lambda: build_cache(
        model, open_token_stream(str(text), s["n_ctx"], model, epochs=None), [site], tmp / "cache",
        tokens + (s["shuffle"] + 1) * s["batch"], rows_per_shard=s["batch"] * 2, model_batch_size=s["model_batch"],
        device=model.device))[0]
    print(f"  cache build {res['cache_build_s']:.1f} s", file=sys.stderr, flush=True)
    del model
    cases = {
        "mechscope": lambda: _train(_job(folder, s, [site], text), tmp / "ms"),
        "sae_lens": lambda: _sae_lens(folder, s, site, windows, tmp),
        "mechscope_cache": lambda: _train(_job(folder, s, [site], text, activations=str(tmp / "cache")), tmp / "mc"),
        "multi_site": lambda: _train(_job(folder, s, sites, text), tmp / "multi"),
        "single_site_jobs": lambda: sum(_train(_job(folder, s, [x], text), tmp / f"one{i}")
                                        for i, x in enumerate(sites)),
    }
    import sae_lens  # noqa: F401 - both libraries imported outside every timer

    import mechscope.interp.cache, mechscope.interp.shuffle, mechscope.interp.stream  # noqa: E401, F401
    import mechscope.sae.io, mechscope.sae.sweep  # noqa: E401, F401

    rounds: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(repeats):
        for k, case in cases.items():
            rounds[k].append(case())
            print(f"  round {i + 1}: {k} {rounds[k][-1]:.1f} s", file=sys.stderr, flush=True)  # partial results survive
    res["rounds"] = rounds
    for k, times in rounds.items():
        res[f"{k}_s"] = statistics.median(times)
    for k in ("mechscope", "sae_lens", "mechscope_cache"):
        res[f"{k}_tokens_per_s"] = tokens / res[f"{k}_s"]
    # ratios per round (both sides measured back to back), then their median
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))  # noqa: E731
    res["speedup_vs_sae_lens"] = ratio("sae_lens", "mechscope")
    res["cache_speedup"] = ratio("mechscope", "mechscope_cache")
    res["multi_site_speedup"] = ratio("single_site_jobs", "multi_site")
    if out_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def format_pipeline(r: dict[str, Any]) -> str:
    s = r["shape"]
    return "\n".join([
        f"pipeline: GPT-2-shaped model ({s['n_layer']} layers, d_model {s['d_model']}, ctx {s['n_ctx']}, random "
        f"weights) -> top-k SAE (d_sae {s['d_sae']}, k {s['k']}, batch {s['batch']}), {r['tokens']} tokens, "
        f"device {r['device']}; medians of {r['repeats']} interleaved round(s), ratios = medians of per-round ratios",
        f"  mechscope train (text):   {r['mechscope_tokens_per_s']:>10.0f} tokens/s",
        f"  SAELens runner (text):    {r['sae_lens_tokens_per_s']:>10.0f} tokens/s   "
        f"mechscope / SAELens = {r['speedup_vs_sae_lens']:.2f}x",
        f"  mechscope train (cache):  {r['mechscope_cache_tokens_per_s']:>10.0f} tokens/s   "
        f"cache / text = {r['cache_speedup']:.2f}x (cache build {r['cache_build_s']:.1f} s)",
        f"  {r['n_sites']} sites, one forward:     {r['multi_site_s']:>10.1f} s   {r['n_sites']} single-site jobs: "
        f"{r['single_site_jobs_s']:.1f} s   ratio {r['multi_site_speedup']:.2f}x",
        "  seconds per round: " + "; ".join(f"{k} {', '.join(f'{t:.1f}' for t in v)}" for k, v in r["rounds"].items()),
    ])
