"""``mechscope eval SAE_DIR``: SAEBench-style core report of a dictionary on its model.

Prints a table and writes ``--json`` (default ``SAE_DIR/eval.json`` when the folder is writable,
else nothing): the nested SAEBench ``core`` field names of `mechscope.sae.core_eval.CoreEval`.
Any folder `mechscope.sae.io.load_dictionary` reads works (mechscope, SAELens, sparsify);
transcoders are spliced at their output site (downstream CE / KL).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from mechscope.apps.cli import command


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae_dir", help="a dictionary folder (mechscope, SAELens or sparsify format)")
    p.add_argument("--model", default="gpt2-shakespeare", help="model the dictionary reads")
    p.add_argument("--site", default=None, help="input site (default: from the dictionary's metadata)")
    p.add_argument("--site-out", default=None, help="output site of a transcoder (default: metadata)")
    p.add_argument("--text", default="zoo:heldout", help="text spec of the spliced CE / KL windows")
    p.add_argument("--density-text", default="zoo:train", help="text spec of the density pass")
    p.add_argument("--tokens", type=int, default=2**20, help="tokens of the density pass (dead / dense "
                   "fractions, L0, FVU, shrinkage)")
    p.add_argument("--windows", type=int, default=64, help="held-out windows spliced for CE / KL")
    p.add_argument("--n-ctx", type=int, default=128, help="tokens per context window")
    p.add_argument("--batch-size", type=int, default=16, help="windows per model forward")
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
    site_in = args.site or getattr(cfg, "site_in", "")
    if not site_in:
        raise ValueError("the dictionary records no site; pass --site (e.g. L2.resid_pre)")
    site_out = args.site_out or (getattr(cfg, "site_out", "") if getattr(cfg, "transcoder", False) else "")
    return site_in, site_out or None


@command("eval", "Core evaluation of a dictionary on its model (SAEBench fields): CE / KL recovered, "
         "L0, FVU, dead / dense fractions, shrinkage.", _eval_options)
def eval_cmd(args: argparse.Namespace) -> int:
    from mechscope.interp.tokens import open_token_stream
    from mechscope.files import write_json
    from mechscope.interp.models import load_model
    from mechscope.sae.core_eval import core_eval
    from mechscope.sae.io import load_dictionary

    for name in ("tokens", "windows", "n_ctx", "batch_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    dictionary = load_dictionary(args.sae_dir)
    site_in, site_out = _sites(dictionary, args)
    model = load_model(args.model)
    held = open_token_stream(args.text, args.n_ctx, model, epochs=1)
    dense = open_token_stream(args.density_text, args.n_ctx, model, epochs=None)
    result = core_eval(model, dictionary, site_in, held, dense, n_tokens=args.tokens,
                       splice_windows=args.windows, site_out=site_out, batch_size=args.batch_size,
                       keep_mask=held.keep_mask)
    report = result.saebench()
    print(format_report(report, f"{args.sae_dir} at {site_in}{' -> ' + site_out if site_out else ''} "
                                f"on {args.model}"))
    out = Path(args.json) if args.json else Path(args.sae_dir) / "eval.json"
    metrics = {g: {k: None if math.isnan(v) else v for k, v in f.items()} for g, f in report.items()}
    write_json(out, {"sae_dir": str(args.sae_dir), "model": args.model, "site_in": site_in,
                     "site_out": site_out, "eval_result_metrics": metrics}, indent=2)
    print(f"report: {out}")
    return 0
