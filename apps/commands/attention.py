"""``mechscope trace-attention``: attention-SVD head-communication graph (Franco & Crovella)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from mechscope.apps.cli import command
from mechscope.apps.commands.common import (check_prompt_lengths, graph_options, load_model_from, read_prompts,
                                             save_graph, writable_parent)
from mechscope.circuits.graph import Graph, parse_head
from mechscope.circuits.svd_trace import trace_attention

if TYPE_CHECKING:
    from mechscope.interp.models import Model

def parse_heads(specs: Sequence[str], model: "Model") -> list[tuple[int, int]]:
    """``["L1H3", ...]`` -> ``[(1, 3), ...]``, checked against the model."""
    out = []
    for spec in specs:
        layer, head = parse_head(spec)
        if not (0 <= layer < model.n_layers and 0 <= head < model.n_heads):
            raise ValueError(f"head {spec}: valid layers 0..{model.n_layers - 1}, heads 0..{model.n_heads - 1}")
        out.append((layer, head))
    if not out:
        raise ValueError("no heads given")
    return out


def trace_attention_cli(model: "Model", prompts: Sequence[str], heads: Sequence[str],
                        firing_threshold: float = 0.3, share: float = 0.7,
                        max_depth: int | None = None) -> Graph:
    """``mechscope trace-attention``: text prompts and ``L<l>H<h>`` heads -> aggregated graph."""
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError("the prompts file has no non-empty lines")
    parsed = parse_heads(heads, model)
    rows = [model.to_tokens(p)[0] for p in prompts]
    g = trace_attention(model, rows, parsed, firing_threshold=firing_threshold, share=share,
                        max_depth=max_depth)
    g.meta = replace(g.meta, prompts=tuple(prompts))
    return g


def _svd_options(p: argparse.ArgumentParser) -> None:
    graph_options(p)
    p.add_argument("--heads", nargs="+", required=True, help="heads to trace from, e.g. L1H3")
    p.add_argument("--firing-threshold", type=float, default=0.3, help="attention weight that counts as a firing")
    p.add_argument("--share", type=float, default=0.7, help="share of the signal an upstream head must carry")
    p.add_argument("--max-depth", type=int, default=None, help="recursion depth (default: down to the embedding)")


@command("trace-attention", "Attention-SVD decomposition (Franco & Crovella): head-communication graph.", _svd_options)
def trace_attention_cmd(args: argparse.Namespace) -> int:
    writable_parent(args.out)
    prompts = read_prompts(args.prompts)
    model = load_model_from(args)
    check_prompt_lengths(model, prompts, args.prompts)
    graph = trace_attention_cli(model, prompts, args.heads, args.firing_threshold, args.share, args.max_depth)
    save_graph(graph, args.out, args.html, args.browser)
    return 0
