"""``mechscope trace``: a sparse feature circuit (Marks et al.) of prompts from files.

    mechscope trace --model M --dictionaries DIR --prompts FILE --metric SPEC --out graph.json

* ``DIR`` holds one dictionary folder per site, named by the site (``DIR/L1.resid_post/``), as
  written by `mechscope.sae.io.save_dictionary` (SAELens-compatible folders load too).
* ``FILE``: plain text, one prompt per line; or JSON lines ``{"prompt": ..., "patch": ...,
  "target": ..., "foil": ...}`` (``patch``: the contrastive prompt; ``target``/``foil``: tokens).
* metric ``SPEC`` and ``--position``: see `mechscope.apps.commands.metric_spec` (``next_token``,
  ``logprob:TOK``, ``logit_diff:A,B``, ``prob:..``, ``expected:..`` for numerical answers,
  ``jsonl``, ``py:FILE.py:FUNC`` for a user function; at the last position, chosen positions,
  ``all``, or each record's ``position``).

Prompts of any lengths are traced in one call: grouped by token length, one batch per length
(``--chunk`` prompts per pass at most), node scores and edges averaged over all prompts before the
threshold, faithfulness measured over all prompts (`feature_circuits.trace` of several setups).
Where faithfulness is undefined it is recorded as null and the graph is still written.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mechscope.apps.cli import command
from mechscope.apps.commands.common import beside, device_options, load_model_from, save_graph
from mechscope.apps.commands.metric_spec import SPECS, make_metric
from mechscope.circuits.attribution import Setup
from mechscope.circuits.feature_circuits import trace
from mechscope.circuits.graph import Graph


def load_dictionaries(directory: "str | Path") -> dict[str, Any]:
    """``{site name: dictionary}`` from a folder of per-site dictionary folders."""
    from mechscope.interp.sites import Site, SiteError
    from mechscope.sae.io import load_dictionary

    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"dictionaries folder {root} does not exist")
    out = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            Site.parse(sub.name)
        except SiteError as exc:
            raise ValueError(f"{sub}: dictionary folders must be named by their site, e.g. "
                             f"'L1.resid_post' ({exc})") from exc
        out[sub.name] = load_dictionary(sub)
    if not out:
        raise ValueError(f"{root} holds no dictionary folders (expected e.g. {root}/L1.resid_post/)")
    return out


def read_prompt_records(path: "str | Path") -> list[dict[str, Any]]:
    """Prompt records ``{"prompt", "patch"?, "target"?, "foil"?}`` from text or JSON lines."""
    from mechscope.apps.commands.common import read_lines

    lines = read_lines(path)
    if lines[0].lstrip().startswith("{"):
        recs = []
        for i, ln in enumerate(lines):
            try:
                recs.append(json.loads(ln))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {i + 1} is not a JSON prompt record ({e})") from None
        for i, r in enumerate(recs):
            if not isinstance(r, dict) or "prompt" not in r:
                raise ValueError(f"{path} line {i + 1}: a JSON prompt record needs a 'prompt' field")
        return recs
    return [{"prompt": ln} for ln in lines]


def trace_cli(model: "str | Any", prompts: "str | Path", out: "str | Path | None" = None,
              dictionaries: "str | Path | None" = None, sites: Sequence[str] | None = None,
              metric: str = "next_token", method: str = "atp", ablation: str | None = None,
              node_threshold: float = 0.1, edge_threshold: float | None = None,
              relative: bool = False, per_position: bool = False, steps: int = 10,
              chunk: int | None = None, position: "str | int | None" = None) -> Graph:
    """Trace from files and write ``out`` (JSON). ``sites`` adds sites without dictionaries (e.g.
    ``L0.z`` for head nodes); with neither dictionaries nor sites, every layer's ``z`` (and
    ``mlp_out``) is traced."""
    from mechscope.interp.models import load_model

    model = load_model(model) if isinstance(model, (str, Path)) else model
    site_map: dict[str, Any] = ({s: beside(d, model) for s, d in load_dictionaries(dictionaries).items()}
                                if dictionaries else {})
    for s in sites or ():
        site_map.setdefault(s, None)
    if not site_map:
        for layer in range(model.n_layers):
            site_map[f"L{layer}.z"] = None
            if not model.attn_only:
                site_map[f"L{layer}.mlp_out"] = None
    recs = read_prompt_records(prompts)
    from mechscope.apps.commands.common import check_prompt_lengths

    check_prompt_lengths(model, [r[k] for r in recs for k in ("prompt", "patch") if k in r], prompts)
    has_patch = [("patch" in r) for r in recs]
    if any(has_patch) and not all(has_patch):
        raise ValueError("either every prompt record has a 'patch' prompt or none has")
    setups = []
    for group in _by_length(model, recs):
        clean = torch.cat([model.to_tokens(r["prompt"]) for r in group])
        patch = torch.cat([model.to_tokens(r["patch"]) for r in group]) if all(has_patch) else None
        setups.append(Setup.build(model, site_map, make_metric(model, metric, clean, group, position), clean,
                                  ablation=ablation, patch=patch))
    graph, _ = trace(setups, method=method, node_threshold=node_threshold, relative=relative,
                     edge_threshold=edge_threshold, per_position=per_position, steps=steps,
                     chunk=chunk)
    if out is not None:
        graph.save(out)
    return graph


def _by_length(model: Any, recs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Prompt records grouped by token length (each group is one batch)."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault(model.to_tokens(r["prompt"]).shape[1], []).append(r)
    return list(groups.values())


def metric_options(p: argparse.ArgumentParser) -> None:
    """``--metric`` and ``--position`` (`metric_spec`)."""
    p.add_argument("--metric", default="next_token", help=SPECS)
    p.add_argument("--position", default=None,
                   help="where the metric is read: -1 (last, default), an index, a comma list (averaged) "
                        "or 'all'; JSON records may give each prompt's 'position'")


def _trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    device_options(p)
    p.add_argument("--prompts", required=True,
                   help="text file (one prompt per line) or JSON lines with prompt / patch / target / foil")
    p.add_argument("--out", required=True, help="output graph JSON")
    p.add_argument("--dictionaries", default=None, help="folder of dictionary folders named by site (DIR/L1.resid_post/)")
    p.add_argument("--sites", nargs="*", default=None, help="extra sites without dictionaries (e.g. L0.z: one node per head)")
    metric_options(p)
    p.add_argument("--method", choices=["atp", "ig", "grad_x_act"], default="atp",
                   help="node scores: attribution patching, integrated gradients, gradient x activation")
    p.add_argument("--ablation", choices=["zero", "mean", "resample"], default=None,
                   help="what a removed node becomes (default: the patch prompt if given, else zero)")
    p.add_argument("--node-threshold", type=float, default=0.1, help="keep nodes with |score| at least this")
    p.add_argument("--edge-threshold", type=float, default=None, help="keep edges with |weight| at least this")
    p.add_argument("--steps", type=int, default=10, help="integrated-gradients steps")
    p.add_argument("--per-position", action="store_true", help="one node per token position (else summed)")
    p.add_argument("--chunk", type=int, default=None, help="prompts per forward pass (bounds memory)")
    from mechscope.apps.commands.common import html_options

    html_options(p)


@command("trace", "Sparse feature circuit (Marks et al.) of prompts through dictionaries and error nodes.", _trace_options)
def trace_cmd(args: argparse.Namespace) -> int:
    from mechscope.apps.commands.common import writable_parent

    writable_parent(args.out)
    model = load_model_from(args)
    graph = trace_cli(model, args.prompts, None, args.dictionaries, args.sites, args.metric, args.method,
                      args.ablation, args.node_threshold, args.edge_threshold, per_position=args.per_position,
                      steps=args.steps, chunk=args.chunk, position=args.position)
    rows = [model.to_tokens(r["prompt"])[0] for r in read_prompt_records(args.prompts)]
    save_graph(graph, args.out, args.html, args.browser, model, rows)
    return 0
