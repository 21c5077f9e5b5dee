"""Helpers shared by the tracing subcommands: prompt files, graph output, common flags."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_lines(path: "str | Path", what: str = "prompts file") -> list[str]:
    """The non-empty lines of a UTF-8 text file; every failure names the file."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a text file, one prompt per line")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (one prompt per line)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{what} {path} has no non-empty lines")
    return lines


def read_prompts(path: str) -> list[str]:
    return read_lines(path)


def check_prompt_lengths(model: Any, prompts: Sequence[str], path: "str | Path") -> None:
    """Refuse prompts longer than the model's context (TransformerLens would fail or truncate)."""
    for i, prompt in enumerate(prompts):
        try:
            model.to_tokens(prompt)
        except ValueError as e:
            raise ValueError(f"prompts file {path}, prompt {i + 1}: {e}; shorten it") from None


def writable_parent(out: "str | Path", flag: str = "--out") -> Path:
    """Check before the work that ``out`` (a file) can be written: not a folder, parent writable."""
    from mechscope.lock import writable_dir

    p = Path(out)
    if p.is_dir():
        raise ValueError(f"{flag} {out} is a folder; give a file name (e.g. {p / 'graph.json'})")
    writable_dir(p.parent if str(p.parent) else ".", flag=f"{flag} {out}: folder")
    return p


def check_sizes(args: argparse.Namespace, model: Any = None) -> None:
    """``--tokens`` and ``--n-ctx`` in range (``--n-ctx`` within the model's context once loaded)."""
    if args.tokens < 1:
        raise ValueError(f"--tokens {args.tokens} is invalid: must be a positive number of tokens")
    if args.n_ctx < 2:
        raise ValueError(f"--n-ctx {args.n_ctx} is invalid: must be >= 2 (BOS and at least one token)")
    if model is not None and args.n_ctx > model.n_ctx:
        raise ValueError(f"--n-ctx {args.n_ctx} exceeds the context of model {model.name!r} ({model.n_ctx} tokens)")


def save_graph(graph, out: str, html: bool, browser: "str | None" = None, model: Any = None,
               rows: "Sequence[Any] | None" = None) -> None:
    """Write the graph JSON and, with ``html``, the viewer next to it; ``browser``: a feature
    browser folder (``mechscope features``) that feature nodes link to. With the ``model`` and the
    prompts' token rows, a page's head nodes get their detail panels (attention patterns, top
    output tokens: `mechscope.apps.head_details`), stored in the JSON too."""
    if (html or browser) and model is not None and rows:
        from mechscope.apps.head_details import with_head_details

        graph = with_head_details(graph, model, rows)
    print(f"{graph!r} -> {graph.save(out)}")
    if html or browser:
        from mechscope.apps.graph_viewer import browser_links, write_graph_html

        page = Path(out).with_suffix(".html")
        links = browser_links(browser, page) if browser else None
        print(f"graph viewer: {write_graph_html(graph, page, feature_url=links)}")
        if browser:
            from mechscope.apps.graph_viewer import record_in_browsers

            for folder in record_in_browsers(browser, page, graph):
                print(f"feature pages in {folder} link to this graph")


def device_options(p: argparse.ArgumentParser) -> None:
    """``--device`` / ``--dtype``: every subcommand that runs a model takes them."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", help="model weights: float32, bfloat16, float16")


def load_model_from(args: argparse.Namespace, spec: str | None = None):
    """The model of ``--model`` (or ``spec``) on ``--device`` in ``--dtype``."""
    from mechscope.interp.models import load_model

    return load_model(spec or args.model, device=args.device, dtype=args.dtype)


def beside(dictionary, model):
    """A loaded dictionary moved to the model's device (dictionaries keep their float32 weights)."""
    return dictionary.to(model.device) if hasattr(dictionary, "to") else dictionary


def graph_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    device_options(p)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--out", required=True, help="output graph JSON")
    html_options(p)


def html_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", action="store_true", help="also write the graph viewer next to the JSON (.html)")
    p.add_argument("--browser", default=None, metavar="DIR",
                   help="feature browser folder (mechscope features): feature nodes link to their pages (implies --html)")
