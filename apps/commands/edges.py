"""``mechscope edges``: an edge-level circuit (EAP / EAP-IG) of prompts from a file.

    mechscope edges --model M --prompts FILE --metric SPEC --out graph.json [--method eap-ig]

Prompts and metrics are read as by ``mechscope trace`` (text, or JSON lines with ``patch`` /
``target`` / ``foil``). With ``patch`` prompts the reference is the corrupted run (the setting of
Hanna et al.), otherwise ``--reference mean`` or ``zero``. Prompts may have any lengths: they
are grouped by token length (a patch prompt must match its prompt token for token), and edge
scores, the threshold, ``n_prompts`` and the faithfulness are computed over all prompts (a
``mean`` reference pooled over all of them). ``--chunk`` prompts and ``--step-chunk`` EAP-IG
steps per pass bound memory. The graph records the faithfulness of its edge set, measured by
edge-masked forward passes (None, with a warning, when the reference does not move the metric;
the graph is written either way).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from mechscope.apps.cli import command
from mechscope.apps.commands.common import device_options, save_graph
from mechscope.apps.commands.metric_spec import make_metric
from mechscope.apps.commands.trace import metric_options, read_prompt_records
from mechscope.circuits.edges import EdgeTask, edge_circuit
from mechscope.circuits.graph import Graph


def edges_cli(model: "str | Any", prompts: "str | Path", out: "str | Path | None" = None,
              metric: str = "next_token", method: str = "eap-ig", reference: str | None = None,
              steps: int = 10, top_n: int | None = None, threshold: float = 0.1,
              relative: bool = True, position: "str | int | None" = None, chunk: int | None = None,
              step_chunk: int | None = None, device: str = "cpu", dtype: str = "float32") -> Graph:
    """Trace an edge-level circuit from files and write ``out`` (JSON); a model given by name is
    loaded on ``device`` in ``dtype``."""
    from mechscope.interp.models import load_model

    model = load_model(model, device=device, dtype=dtype) if isinstance(model, (str, Path)) else model
    recs = read_prompt_records(prompts)
    from mechscope.apps.commands.common import check_prompt_lengths

    check_prompt_lengths(model, [r[k] for r in recs for k in ("prompt", "patch") if k in r], prompts)
    has_patch = [("patch" in r) for r in recs]
    if any(has_patch) and not all(has_patch):
        raise ValueError("either every prompt record has a 'patch' prompt or none has")
    reference = reference or ("patch" if all(has_patch) else "mean")
    by_length: dict[int, list[dict[str, Any]]] = {}
    for r in recs:  # one task per token length
        by_length.setdefault(model.to_tokens(r["prompt"]).shape[1], []).append(r)
    group = []
    for recs_n in by_length.values():
        clean = torch.cat([model.to_tokens(r["prompt"]) for r in recs_n])
        patch = None
        if reference == "patch" and all(has_patch):
            toks = [model.to_tokens(r["patch"]) for r in recs_n]
            bad = [r for r, t in zip(recs_n, toks) if t.shape[1] != clean.shape[1]]
            if bad:
                raise ValueError(f"patch prompt {bad[0]['patch']!r} is not as long in tokens as its prompt "
                                 f"{bad[0]['prompt']!r} ({clean.shape[1]} tokens): contrastive pairs "
                                 f"must match token for token")
            patch = torch.cat(toks)
        group.append(EdgeTask(model, clean, make_metric(model, metric, clean, recs_n, position), reference, patch))
    graph = edge_circuit(group, method, steps, top_n, threshold, relative, chunk, step_chunk)
    if out is not None:
        graph.save(out)
    return graph


def _edges_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    device_options(p)
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
    p.add_argument("--chunk", type=int, default=None, help="prompts per forward pass (bounds memory)")
    p.add_argument("--step-chunk", type=int, default=None, help="EAP-IG steps per forward pass (bounds memory)")
    from mechscope.apps.commands.common import html_options

    html_options(p)


@command("edges", "Edge-level circuit (EAP / EAP-IG) with the faithfulness of its edge set.", _edges_options)
def edges_cmd(args: argparse.Namespace) -> int:
    from mechscope.interp.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    graph = edges_cli(model, args.prompts, None, args.metric, args.method, args.reference,
                      args.steps, args.top_n, args.threshold, position=args.position,
                      chunk=args.chunk, step_chunk=args.step_chunk)
    rows = [model.to_tokens(r["prompt"])[0] for r in read_prompt_records(args.prompts)]
    save_graph(graph, args.out, args.html, args.browser, model, rows)
    print(f"faithfulness of the edge set: {graph.meta.faithfulness}")
    return 0
