"""Handlers of the circuit-tracing subcommands (registered on import by `mechscope.apps.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mechscope.apps.cli import command


def _prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist (one prompt per line)")
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompts file {path} has no non-empty lines")
    return lines


def _save(graph, out: str, html: bool) -> None:
    print(f"{graph!r} -> {graph.save(out)}")
    if html:
        from mechscope.apps.graph_viewer import write_graph_html

        print(f"graph viewer: {write_graph_html(graph, Path(out).with_suffix('.html'))}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--out", required=True, help="output graph JSON")
    p.add_argument("--html", action="store_true", help="also write the graph viewer next to the JSON (.html)")


def _routes_options(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--tau", type=float, default=0.04, help="threshold on a part's share of its representation")
    p.add_argument("--view", choices=["heads", "summed"], default="heads",
                   help="heads kept apart on edges, or summed per source as in the LM transparency tool")
    p.add_argument("--signed", action="store_true", help="signed variant: promotion vs suppression of the prediction")


@command("routes", "Information flow routes (Ferrando & Voita) of prompts, aggregated into one graph.", _routes_options)
def routes_cmd(args: argparse.Namespace) -> int:
    from mechscope.circuits.routes_aggregate import routes_cli
    from mechscope.interp.models import load_model

    graph = routes_cli(load_model(args.model), _prompts(args.prompts), args.tau, args.view, args.signed)
    _save(graph, args.out, args.html)
    return 0


def _svd_options(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--heads", nargs="+", required=True, help="heads to trace from, e.g. L1H3")
    p.add_argument("--firing-threshold", type=float, default=0.3, help="attention weight that counts as a firing")
    p.add_argument("--share", type=float, default=0.7, help="share of the signal an upstream head must carry")
    p.add_argument("--max-depth", type=int, default=None, help="recursion depth (default: down to the embedding)")


@command("trace-attention", "Attention-SVD decomposition (Franco & Crovella): head-communication graph.", _svd_options)
def trace_attention_cmd(args: argparse.Namespace) -> int:
    from mechscope.circuits.svd_trace import trace_attention_cli
    from mechscope.interp.models import load_model

    graph = trace_attention_cli(load_model(args.model), _prompts(args.prompts), args.heads,
                                args.firing_threshold, args.share, args.max_depth)
    _save(graph, args.out, args.html)
    return 0


def _trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    p.add_argument("--prompts", required=True,
                   help="text file (one prompt per line) or JSON lines with prompt / patch / target / foil")
    p.add_argument("--out", required=True, help="output graph JSON")
    p.add_argument("--dictionaries", default=None, help="folder of dictionary folders named by site (DIR/L1.resid_post/)")
    p.add_argument("--sites", nargs="*", default=None, help="extra sites without dictionaries (e.g. L0.z: one node per head)")
    p.add_argument("--metric", default="next_token", help="next_token | logprob:TOKEN | logit_diff:A,B | jsonl")
    p.add_argument("--method", choices=["atp", "ig", "grad_x_act"], default="atp",
                   help="node scores: attribution patching, integrated gradients, gradient x activation")
    p.add_argument("--ablation", choices=["zero", "mean", "resample"], default=None,
                   help="what a removed node becomes (default: the patch prompt if given, else zero)")
    p.add_argument("--node-threshold", type=float, default=0.1, help="keep nodes with |score| at least this")
    p.add_argument("--edge-threshold", type=float, default=None, help="keep edges with |weight| at least this")
    p.add_argument("--steps", type=int, default=10, help="integrated-gradients steps")
    p.add_argument("--per-position", action="store_true", help="one node per token position (else summed)")
    p.add_argument("--html", action="store_true", help="also write the graph viewer next to the JSON (.html)")


@command("trace", "Sparse feature circuit (Marks et al.) of prompts through dictionaries and error nodes.", _trace_options)
def trace_cmd(args: argparse.Namespace) -> int:
    from mechscope.circuits.trace_cli import trace_cli

    graph = trace_cli(args.model, args.prompts, None, args.dictionaries, args.sites, args.metric, args.method,
                      args.ablation, args.node_threshold, args.edge_threshold, per_position=args.per_position,
                      steps=args.steps)
    _save(graph, args.out, args.html)
    return 0


def _verify_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer prompts (seconds)")


@command("verify", "Trace toy models with known circuits and print precision / recall and causal agreement.", _verify_options)
def verify_cmd(args: argparse.Namespace) -> int:
    from mechscope.circuits.verify import format_verify, verify_all

    print(format_verify(verify_all(quick=args.quick)))
    return 0
