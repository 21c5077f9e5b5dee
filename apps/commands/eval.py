"""``mechscope eval SAE_DIR``: SAEBench-style report of a dictionary on its model.

``--evals`` picks among (default: all):

- ``core``: `mechscope.sae.core_eval.CoreEval` — CE / KL scores spliced on held-out windows
  (transcoders at their output site), L0, FVU, shrinkage, dead / dense fractions over many tokens;
- ``absorption``: first-letter feature absorption (`mechscope.sae.absorption`, Chanin et al.);
- ``sparse_probing``: k-sparse probes on the codes vs a dense probe on the activations
  (`mechscope.sae.sparse_probing`), the task being which held-out play a line comes from.

Prints a table per evaluation and writes ``--json`` (default ``SAE_DIR/eval.json``): the core
metrics under ``eval_result_metrics`` (SAEBench's nested core field names), and one entry per other
evaluation under its SAEBench ``eval_type_id`` (``absorption_first_letter``, ``sparse_probing``)
with ``eval_result_metrics``, ``eval_result_details`` and ``eval_config``. An evaluation the data
cannot support (e.g. a character-level tokenizer for absorption) is reported with its reason
and the others still run. Any folder `mechscope.sae.io.load_dictionary` reads works (mechscope,
SAELens, sparsify).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from mechscope.apps.cli import command
from mechscope.apps.commands.common import beside, device_options, load_model_from

EVALS = ("core", "absorption", "sparse_probing")


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae_dir", help="a dictionary folder (mechscope, SAELens or sparsify format)")
    p.add_argument("--model", default="gpt2-shakespeare", help="model the dictionary reads")
    p.add_argument("--evals", default=",".join(EVALS), help="comma-separated evaluations: " + ", ".join(EVALS))
    p.add_argument("--site", default=None, help="input site (default: from the dictionary's metadata)")
    p.add_argument("--site-out", default=None, help="output site of a transcoder (default: metadata)")
    p.add_argument("--text", default="zoo:heldout", help="text spec of the spliced CE / KL windows and of "
                   "the words of the absorption task")
    p.add_argument("--density-text", default="zoo:train", help="text spec of the density pass")
    p.add_argument("--tokens", type=int, default=2**20, help="tokens of the density pass (dead / dense "
                   "fractions, L0, FVU, shrinkage)")
    p.add_argument("--windows", type=int, default=64, help="held-out windows spliced for CE / KL")
    p.add_argument("--n-ctx", type=int, default=128, help="tokens per context window")
    p.add_argument("--batch-size", type=int, default=16, help="windows per model forward")
    p.add_argument("--absorption-windows", type=int, default=512, help="text windows searched for the "
                   "tokenizer's word tokens (first occurrence of each)")
    p.add_argument("--min-letters", type=int, default=5, help="absorption needs this many letters with a "
                   "first-letter probe of test F1 >= 0.6 (SAEBench: 20)")
    p.add_argument("--probe-lines", type=int, default=300, help="lines per play for sparse probing")
    p.add_argument("--ks", default="1,2,5", help="k of the k-sparse probes")
    device_options(p)
    p.add_argument("--json", default=None, help="write the report here (default SAE_DIR/eval.json)")


def format_report(report: dict[str, dict[str, float]], title: str) -> str:
    rows = [(f"{group}.{k}", v) for group, fields in report.items() for k, v in fields.items()]
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * (width + 14)]
    for name, v in rows:
        text = "nan" if isinstance(v, float) and math.isnan(v) else (f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}")
        lines.append(f"{name:<{width}}  {text:>12}")
    return "\n".join(lines)


def _sites(dictionary: Any, args: argparse.Namespace) -> tuple[str, str | None]:
    cfg = getattr(dictionary, "cfg", None)
    site_in = args.site or getattr(cfg, "site_in", "") or getattr(dictionary, "site_in", "")
    if not site_in:
        raise ValueError("the dictionary records no site; pass --site (e.g. L2.resid_pre)")
    site_out = args.site_out or (getattr(cfg, "site_out", "") if getattr(cfg, "transcoder", False) else "")
    return site_in, site_out or None


def _parse(args: argparse.Namespace) -> tuple[list[str], tuple[int, ...]]:
    for name in ("tokens", "windows", "n_ctx", "batch_size", "absorption_windows", "min_letters", "probe_lines"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    evals = [e.strip() for e in args.evals.split(",") if e.strip()]
    bad = [e for e in evals if e not in EVALS]
    if bad or not evals:
        raise ValueError(f"--evals {args.evals!r}: unknown {bad or 'empty list'}; valid: {', '.join(EVALS)}")
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        raise ValueError(f"--ks {args.ks!r} must be comma-separated integers, e.g. 1,2,5") from None
    if any(k < 1 for k in ks):
        raise ValueError(f"--ks {args.ks!r}: every k must be >= 1")
    return evals, ks


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def _core(model: Any, dictionary: Any, site_in: str, site_out: Any, args: argparse.Namespace) -> dict[str, Any]:
    from mechscope.interp.tokens import open_token_stream
    from mechscope.sae.core_eval import core_eval

    held = open_token_stream(args.text, args.n_ctx, model, epochs=1)
    dense = open_token_stream(args.density_text, args.n_ctx, model, epochs=None)
    result = core_eval(model, dictionary, site_in, held, dense, n_tokens=args.tokens, splice_windows=args.windows,
                       site_out=site_out, batch_size=args.batch_size, keep_mask=held.keep_mask)
    return {"eval_result_metrics": result.saebench()}


def _absorption(model: Any, dictionary: Any, site_in: str, site_out: Any, args: argparse.Namespace) -> dict[str, Any]:
    import itertools

    from mechscope.interp.tokens import open_token_stream
    from mechscope.sae.absorption import AbsorptionConfig, absorption, spelling_set

    cfg = AbsorptionConfig(min_letters=args.min_letters)
    windows = itertools.islice(open_token_stream(args.text, args.n_ctx, model, epochs=1), args.absorption_windows)
    data = spelling_set(model, site_in, windows, site_out=site_out, batch_size=args.batch_size,
                        test_fraction=cfg.test_fraction, seed=cfg.seed)
    result = absorption(dictionary, data, cfg)
    return {"eval_result_metrics": result.saebench(), "eval_result_details": result.details(),
            "eval_config": dataclasses.asdict(cfg)}


def _sparse_probing(model: Any, dictionary: Any, site_in: str, args: argparse.Namespace, ks: tuple[int, ...]) -> dict[str, Any]:
    import json

    from mechscope.interp.zoo.corpus import DATA_DIR, corpus_text, split_works
    from mechscope.sae.sparse_probing import probing_set, sparse_probing, work_lines

    names = json.loads((DATA_DIR / "provenance.json").read_text())["splits"]["heldout"]["works"]
    lines, labels = work_lines(split_works(corpus_text("heldout")), names, per_class=args.probe_lines)
    data = probing_set(model, site_in, lines, labels, names, batch_size=2 * args.batch_size)
    result = sparse_probing(dictionary, data, ks=ks)
    return {"eval_result_metrics": result.saebench(), "eval_result_details": list(result.per_class),
            "eval_config": {"ks": list(ks), "dataset": "zoo:heldout plays, one line per example",
                            "lines_per_class": args.probe_lines, "classes": names}}


@command("eval", "Evaluate a dictionary on its model (SAEBench fields): core (CE / KL recovered, L0, FVU, "
         "dead / dense fractions, shrinkage), first-letter absorption, sparse probing.", _eval_options)
def eval_cmd(args: argparse.Namespace) -> int:
    from mechscope.files import write_json
    from mechscope.sae.absorption import AbsorptionError
    from mechscope.sae.io import load_dictionary

    evals, ks = _parse(args)
    dictionary = load_dictionary(args.sae_dir)
    site_in, site_out = _sites(dictionary, args)
    model = load_model_from(args)
    dictionary = beside(dictionary, model)
    where = f"{args.sae_dir} at {site_in}{' -> ' + site_out if site_out else ''} on {args.model}"
    out: dict[str, Any] = {"sae_dir": str(args.sae_dir), "model": args.model, "site_in": site_in,
                           "site_out": site_out, "wall_seconds": {}}
    runs = {"core": lambda: _core(model, dictionary, site_in, site_out, args),
            "absorption": lambda: _absorption(model, dictionary, site_in, site_out, args),
            "sparse_probing": lambda: _sparse_probing(model, dictionary, site_in, args, ks)}
    keys = {"core": None, "absorption": "absorption_first_letter", "sparse_probing": "sparse_probing"}
    for name in evals:
        t0 = time.perf_counter()
        try:
            got = runs[name]()
        except AbsorptionError as e:  # the data cannot support it: say why, run the others
            print(f"{keys[name]}: not evaluated: {e}\n")
            out[keys[name]] = {"error": str(e)}
            continue
        seconds = time.perf_counter() - t0
        out["wall_seconds"][name] = round(seconds, 2)
        if keys[name] is None:
            out.update(got)
        else:
            out[keys[name]] = got
        title = f"{keys[name] or 'core'}: {where} ({seconds:.1f} s)"
        print(format_report(got["eval_result_metrics"], title) + "\n")
    path = Path(args.json) if args.json else Path(args.sae_dir) / "eval.json"
    write_json(path, _nan_to_none(out), indent=2)
    print(f"report: {path}")
    return 0
