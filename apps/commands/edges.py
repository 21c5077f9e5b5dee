"""``mechscope edges``: an edge-level circuit (EAP / EAP-IG) of prompts from a file.

    mechscope edges --model M --prompts FILE --metric SPEC --out graph.json [--method eap-ig]

Prompts and metrics are read as by ``mechscope trace`` (text, or JSON lines with ``patch`` /
``target`` / ``foil``). With ``patch`` prompts the reference is the corrupted run (the setting of
Hanna et al.), otherwise ``--reference mean`` or ``zero``. Prompts of one call must have the
same token length (contrastive pairs token for token). The graph records the faithfulness of
its edge set, measured by edge-masked forward passes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from mechscope.apps.cli import command
from mechscope.apps.commands.common import save_graph
from mechscope.apps.commands.metric_spec import make_metric
from mechscope.apps.commands.trace import metric_options, read_prompt_records
from mechscope.circuits.edges import EdgeTask, edge_circuit
from mechscope.circuits.graph import Graph


def edges_cli(model: "str | Any", prompts: "str | Path", out: "str | Path | None" = None,
              metric: str = "next_token", method: str = "eap-ig", reference: str | None = None,
              steps: int = 10, top_n: int | None = None, threshold: float = 0.1,
              relative: bool = True, position: "str | int | None" = None) -> Graph:
    """Trace an edge-level circuit from files and write ``out`` (JSON)."""
    from mechscope.interp.models import load_model

    model = load_model(model) if isinstance(model, (str, Path)) else model
    recs = read_prompt_records(prompts)
    has_patch = [("patch" in r) for r in recs]
    if any(has_patch) and not all(has_patch):
        raise ValueError("either every prompt record has a 'patch' prompt or none has")
    toks = [model.to_tokens(r["prompt"]) for r in recs]
    patch = [model.to_tokens(r["patch"]) for r in recs] if all(has_patch) else None
    lengths = {t.shape[1] for t in toks + (patch or [])}
    if len(lengths) != 1:
        raise ValueError(f"prompts (and patch prompts) have token lengths {sorted(lengths)}; "
                         f"`mechscope edges` needs one length per call")
    clean = torch.cat(toks)
    reference = reference or ("patch" if patch is not None else "mean")
    task = EdgeTask(model, clean, make_metric(model, metric, clean, recs, position), reference,
                    torch.cat(patch) if patch is not None and reference == "patch" else None)
    graph = edge_circuit(task, method, steps, top_n, threshold, relative)
    if out is not None:
        graph.save(out)
    return graph


def _edges_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    p.add_argument("--prompts", required=True,
                   help="text file (one prompt per line) or JSON lines with prompt / patch / target / foil")
    p.add_argument("--out", required=True, help="output graph JSON")
    metric_options(p)
    p.add_argument("--method", choices=["eap", "eap-ig"], default="eap-ig",
                   help="edge scores: attribution patching, or with integrated gradients over the input")
    p.add_argument("--reference", choices=["patch", "mean", "zero"], default=None,
                   help="what a removed edge carries (default: the patch prompt if given, else mean)")
    p.add_argument("--steps", type=int, default=10, help="EAP-IG steps")
    p.add_argument("--top-n", type=int, default=None, help="keep the N strongest edges (instead of a threshold)")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="keep edges with |score| >= this fraction of the largest")
    from mechscope.apps.commands.common import html_options

    html_options(p)


@command("edges", "Edge-level circuit (EAP / EAP-IG) with the faithfulness of its edge set.", _edges_options)
def edges_cmd(args: argparse.Namespace) -> int:
    from mechscope.interp.models import load_model

    model = load_model(args.model)
    graph = edges_cli(model, args.prompts, None, args.metric, args.method, args.reference,
                      args.steps, args.top_n, args.threshold, position=args.position)
    rows = [model.to_tokens(r["prompt"])[0] for r in read_prompt_records(args.prompts)]
    save_graph(graph, args.out, args.html, args.browser, model, rows)
    print(f"faithfulness of the edge set: {graph.meta.faithfulness}")
    return 0
