"""Helpers shared by the tracing subcommands: prompt files, graph output, common flags."""

from __future__ import annotations

import argparse
from pathlib import Path


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist (one prompt per line)")
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompts file {path} has no non-empty lines")
    return lines


def save_graph(graph, out: str, html: bool) -> None:
    print(f"{graph!r} -> {graph.save(out)}")
    if html:
        from mechscope.apps.graph_viewer import write_graph_html

        print(f"graph viewer: {write_graph_html(graph, Path(out).with_suffix('.html'))}")


def graph_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--out", required=True, help="output graph JSON")
    p.add_argument("--html", action="store_true", help="also write the graph viewer next to the JSON (.html)")
