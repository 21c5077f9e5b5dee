"""``mechscope attention``: attention-SVD head-communication graph (Franco & Crovella 2024), with
query, key and value channels (`mechscope.circuits.svd_trace`).

Traces the given heads at ``--positions`` (destination positions; negative counts from the end
of each prompt; ``a:b`` is a range, end excluded, ``-a:`` the last ``a``; default every position), prints what each
traced head reads on each channel and the projection check, and writes the graph. The projection
check (`ReconstructionCheck`) must hold within ``--tolerance``: otherwise the command stops with
an error that names the firing and what failed, and writes no graph.
``trace-attention`` is the same command under its old name.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from mechscope.apps.cli import command
from mechscope.apps.commands.common import (check_prompt_lengths, graph_options, load_model_from, read_prompts,
                                             save_graph, writable_parent)
from mechscope.circuits.attention_svd_checks import ReconstructionCheck
from mechscope.circuits.graph import Graph, parse_head, parse_node_id
from mechscope.circuits.svd_trace import CANDIDATES, CHANNELS, trace_attention

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


def parse_positions(specs: Sequence[str] | None) -> list[int] | None:
    """``["11", "-1", "3:6"]`` -> ``[11, -1, 3, 4, 5]`` (None: every position)."""
    if not specs:
        return None
    out: list[int] = []
    for spec in specs:
        try:
            if ":" in spec:
                a_, b_ = spec.split(":")
                a = int(a_)
                b = int(b_) if b_ or a >= 0 else 0  # -6: is the last six
                if (a < 0) != (b < 0 or not b_) or b <= a:
                    raise ValueError
                out += range(a, b)
            else:
                out.append(int(spec))
        except ValueError:
            raise ValueError(f"--positions {spec!r}: give token positions as integers (negative "
                             f"from the end: -1 is the last token) or ranges a:b with a < b "
                             f"(end excluded; -a: is the last a), e.g. --positions 11 12 or --positions -6:") from None
    return out


def trace_attention_cli(model: "Model", prompts: Sequence[str], heads: Sequence[str],
                        firing_threshold: float = 0.3, share: float = 0.7, max_depth: int | None = None,
                        positions: Sequence[int] | None = None, candidates: str = "heads",
                        tolerance: float = 1e-3, min_share: float = 0.05) -> Graph:
    """``mechscope attention``: text prompts and ``L<l>H<h>`` heads -> aggregated graph whose
    projection check holds (else a ValueError naming the failure)."""
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError("the prompts file has no non-empty lines")
    if not tolerance > 0:
        raise ValueError(f"--tolerance must be > 0, got {tolerance}")
    parsed = parse_heads(heads, model)
    rows = [model.to_tokens(p)[0] for p in prompts]
    for k, row in enumerate(rows):
        bad = [p for p in positions or () if not -row.numel() <= p < row.numel()]
        if bad:
            raise ValueError(f"--positions {bad}: prompt {k + 1} has {row.numel()} tokens (BOS "
                             f"included): valid 0..{row.numel() - 1} or -{row.numel()}..-1")
    g = trace_attention(model, rows, parsed, firing_threshold=firing_threshold, share=share,
                        max_depth=max_depth, positions=positions, candidates=candidates, tolerance=tolerance,
                        min_share=min_share)
    ReconstructionCheck.from_dict(g.meta.details["check"]).require()
    g.meta = replace(g.meta, prompts=tuple(prompts))
    return g


def report(g: Graph, top: int = 4) -> str:
    """What each traced head reads on each channel (strongest sources first) and the check."""
    check = ReconstructionCheck.from_dict(g.meta.details["check"])
    p = g.meta.parameters
    lines = [f"attention-SVD of {g.meta.model}: {g.meta.n_prompts} prompt(s), heads {' '.join(p['heads'])}, "
             f"candidates {p['candidates']}, firing threshold {p['firing_threshold']}, share {p['share']}, "
             f"min share {p['min_share']}",
             check.summary(),
             f"channel weights: signed shares, mean over the head's traced firings (units in the graph's "
             f"meta.details['units'])"]
    if not check.n_firings:
        lines.append("no firings: no head attends above the firing threshold at these positions")
    firings: dict[str, int] = {}
    for per_prompt in g.meta.details["firings"]:
        for t, n in per_prompt.items():
            firings[t] = firings.get(t, 0) + n
    for t in sorted(firings, key=lambda i: (-parse_node_id(i).layer, i)):
        lines.append(f"{t} ({firings[t]} firings)")
        into = {e.split("->")[0]: cw for e, cw in g.meta.details["channels"].items() if e.endswith(f"->{t}")}
        if not into:
            lines[-1] += ": no upstream source kept" + (" (only heads compete)" if p["candidates"] == "heads" else "")
            continue
        for ch in CHANNELS:
            ranked = sorted(((w[ch], s) for s, w in into.items() if w[ch]), reverse=True)[:top]
            lines.append(f"  {ch}  " + ("  ".join(f"{s} {w:+.3f}" for w, s in ranked) or "-"))
    return "\n".join(lines)


def _svd_options(p: argparse.ArgumentParser) -> None:
    graph_options(p)
    p.add_argument("--heads", nargs="+", required=True, help="heads to trace from, e.g. L1H3")
    p.add_argument("--positions", nargs="+", default=None, metavar="POS",
                   help="destination positions to trace the heads at (negative from the end; a:b ranges); default all")
    p.add_argument("--candidates", choices=CANDIDATES, default="heads",
                   help="who competes for a firing's signal: attention heads only (as the reference code), "
                        "or embeddings and MLPs too")
    p.add_argument("--firing-threshold", type=float, default=0.3, help="attention weight that counts as a firing")
    p.add_argument("--share", type=float, default=0.7, help="share of a channel's total the kept sources must reach")
    p.add_argument("--min-share", type=float, default=0.05,
                   help="smallest mean channel share an edge needs to stay in the graph")
    p.add_argument("--max-depth", type=int, default=None, help="recursion depth (default: down to the embedding)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="projection check: largest relative error of the SVD reconstruction of the scores")


def attention_cmd(args: argparse.Namespace) -> int:
    writable_parent(args.out)
    prompts = read_prompts(args.prompts)
    positions = parse_positions(args.positions)
    model = load_model_from(args)
    check_prompt_lengths(model, prompts, args.prompts)
    start = time.perf_counter()
    graph = trace_attention_cli(model, prompts, args.heads, args.firing_threshold, args.share, args.max_depth,
                                positions, args.candidates, args.tolerance, args.min_share)
    print(report(graph))
    print(f"traced in {time.perf_counter() - start:.2f} s")
    save_graph(graph, args.out, args.html, args.browser, model, [model.to_tokens(p)[0] for p in prompts if p.strip()])
    return 0


_HELP = "Attention-SVD decomposition (Franco & Crovella): head graph with query / key / value edges."
command("attention", _HELP, _svd_options)(attention_cmd)
command("trace-attention", "Same as 'attention' (old name).", _svd_options)(attention_cmd)
