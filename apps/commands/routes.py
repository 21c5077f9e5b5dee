"""``mechscope routes``: information flow routes (Ferrando & Voita) of text prompts.

Routes keep every part that makes up enough of a residual update, whatever it does downstream:
an active component writing only to directions nothing reads (an inert writer) is on the route.
``--causal-filter TOL`` keeps a route edge only if removing it by path patching moves the metric
(the predicted token's logit) by more than TOL (`mechscope.circuits.routes_causal`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from mechscope.apps.cli import command
from mechscope.apps.commands.common import (check_prompt_lengths, graph_options, load_model_from, read_prompts,
                                             save_graph, writable_parent)
from mechscope.circuits.graph import Graph
from mechscope.circuits.routes import DEFAULT_TAU
from mechscope.circuits.routes_aggregate import aggregate_routes, prompt_routes

if TYPE_CHECKING:
    from mechscope.interp.models import Model


def routes_cli(model: "Model", prompts: Sequence[str], tau: float = DEFAULT_TAU, view: str = "heads",
               signed: bool = False, batch_size: int = 16, include_routes: bool = True,
               causal_filter: float | None = None) -> Graph:
    """``mechscope routes``: text prompts (one per line of a file) -> the aggregated component
    graph, with each prompt's positional route in ``per_prompt``. ``causal_filter``: the
    tolerance of `routes_causal.causal_filter`, applied to each prompt's route (heads view)."""
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError("the prompts file has no non-empty lines")
    rows = [model.to_tokens(p)[0] for p in prompts]
    routes = prompt_routes(model, rows, tau, view, signed, batch_size)
    if causal_filter is not None:
        from mechscope.circuits.routes_causal import causal_filter as keep_causal

        routes = [keep_causal(model, r, row, causal_filter) for r, row in zip(routes, rows)]
    agg = aggregate_routes(routes, model.n_layers)
    agg.meta = replace(agg.meta, prompts=tuple(prompts))
    if include_routes:
        agg.per_prompt = list(routes)
    return agg


def _routes_options(p: argparse.ArgumentParser) -> None:
    graph_options(p)
    p.add_argument("--tau", type=float, default=0.04, help="threshold on a part's share of its representation")
    p.add_argument("--view", choices=["heads", "summed"], default="heads",
                   help="heads kept apart on edges, or summed per source as in the LM transparency tool")
    p.add_argument("--signed", action="store_true", help="signed variant: promotion vs suppression of the prediction")
    p.add_argument("--causal-filter", type=float, default=None, metavar="TOL",
                   help="keep a route edge only if removing it (path patching, zero reference) moves the "
                        "predicted token's logit by more than TOL. Without it routes keep every component "
                        "that writes enough, including inert writers (active, but nothing reads what they "
                        "write). Heads view only; two forward passes per edge")


@command("routes", "Information flow routes (Ferrando & Voita) of prompts, aggregated into one graph.", _routes_options)
def routes_cmd(args: argparse.Namespace) -> int:
    writable_parent(args.out)
    prompts = read_prompts(args.prompts)
    model = load_model_from(args)
    check_prompt_lengths(model, prompts, args.prompts)
    graph = routes_cli(model, prompts, args.tau, args.view, args.signed, causal_filter=args.causal_filter)
    save_graph(graph, args.out, args.html, args.browser, model, [model.to_tokens(p)[0] for p in prompts if p.strip()])
    return 0
