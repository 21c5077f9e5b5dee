"""Which graphs contain which features: the feature browser's index of graph pages.

A feature browser folder (``mechscope features --out DIR``) keeps ``graphs.json`` — graph page
(path relative to the folder) → title, method, prompts and, per feature index, the ids and scores
of that feature's nodes in the graph — and the same data as ``graphs.js``
(``window.mechscopeGraphs({...})``), which ``index.html`` loads with a ``<script>`` element
(``fetch`` does not work from ``file://``). Each feature page then lists "Graphs containing this
feature" with links ``<page>#node=<node id>`` that open the graph page with that node selected.

Entries are added two ways: a graph written with ``--browser DIR`` (`record_graph`, called by the
CLI after the page is written), and ``mechscope features --graphs GLOB|DIR`` (`index_graphs`),
which reads graph JSON files and links the page next to each (writing it where missing).
Rewriting the browser keeps the entries (`prepare_index`) and drops those whose page is gone.
A node belongs to a browser when its site is the browser's site (``site`` in the index) and its
index is below ``d_dict``; at most ``MAX_NODES`` nodes per feature and graph are kept (the
strongest by ``|score|``).
"""

from __future__ import annotations

import glob as globlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mechscope.apps.html import script_json, write_text
from mechscope.circuits.graph import Graph, Node
from mechscope.interp.sites import Site, SiteError

INDEX_JSON, INDEX_JS = "graphs.json", "graphs.js"
MAX_NODES, MAX_PROMPTS = 20, 3


def _site(name: str | None) -> str | None:
    try:
        return str(Site.parse(name)) if name else None
    except SiteError:
        return name


def read_index(folder: "str | Path") -> dict[str, Any]:
    """The folder's index (an empty one where there is none yet)."""
    path = Path(folder) / INDEX_JSON
    if not path.is_file():
        return {"site": None, "d_dict": None, "graphs": {}}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("graphs"), dict):
        raise ValueError(f"{path} is not a graph index (expected {{'graphs': {{...}}}}); delete it to start over")
    return {"site": data.get("site"), "d_dict": data.get("d_dict"), "graphs": data["graphs"]}


def _write(folder: Path, index: dict[str, Any]) -> Path:
    write_text(folder / INDEX_JSON, json.dumps(index, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    return write_text(folder / INDEX_JS, f"window.mechscopeGraphs({script_json(index)});\n")


def prepare_index(folder: "str | Path", site: str | None, d_dict: int) -> Path:
    """Called by `write_feature_browser`: (re)write the index for a browser of ``d_dict``
    features at ``site``, keeping the entries whose page still exists (and their features that
    still exist). Returns the path of ``graphs.js``."""
    folder = Path(folder)
    index = read_index(folder)
    graphs = {}
    for page, entry in index["graphs"].items():
        if (folder / page).is_file():
            feats = {f: ids for f, ids in entry.get("features", {}).items() if int(f) < d_dict}
            if feats:
                graphs[page] = {**entry, "features": feats}
    return _write(folder, {"site": _site(site), "d_dict": d_dict, "graphs": graphs})


def browser_site(folder: "str | Path") -> str | None:
    """The site of the browser in ``folder`` as its index records it (None: unknown)."""
    return read_index(folder)["site"] if (Path(folder) / INDEX_JSON).is_file() else None


def belongs(node: Node, index: dict[str, Any]) -> bool:
    """A feature node of the browser's dictionary: same site, index in range (unknown: yes)."""
    if node.kind != "feature" or node.index is None:
        return False
    site, d_dict = index.get("site"), index.get("d_dict")
    return (site is None or _site(node.site) == site) and (d_dict is None or node.index < d_dict)


def feature_nodes(graph: Graph, keep: "Iterable[Node] | None" = None,
                  index: dict[str, Any] | None = None) -> dict[str, list[list[Any]]]:
    """``{feature index: [[node id, score], ...]}`` of the graph's feature nodes (``keep``, or
    those that `belong` to ``index``), strongest first, ``MAX_NODES`` per feature."""
    nodes = list(keep) if keep is not None else [n for n in graph.nodes.values() if belongs(n, index or {})]
    out: dict[str, list[list[Any]]] = {}
    for n in sorted(nodes, key=lambda n: -abs(n.score)):
        ids = out.setdefault(str(n.index), [])
        if len(ids) < MAX_NODES:
            ids.append([n.id, round(float(n.score), 6)])
    return out


def record_graph(folder: "str | Path", page: "str | Path", graph: Graph,
                 keep: "Iterable[Node] | None" = None) -> Path | None:
    """Add (or replace) the entry of graph page ``page`` in the index of browser ``folder``;
    ``keep``: the feature nodes that link into this browser (default: those that `belong`).
    Returns the path of ``graphs.js``, or None when the graph has no such node."""
    folder = Path(folder)
    index = read_index(folder)
    feats = feature_nodes(graph, keep, index)
    rel = Path(os.path.relpath(Path(page).resolve(), folder.resolve())).as_posix()
    if not feats:
        if index["graphs"].pop(rel, None) is None:
            return None
        return _write(folder, index)
    m = graph.meta
    index["graphs"][rel] = {"method": m.method, "model": m.model, "n_prompts": m.n_prompts,
                            "prompts": [p[:80] for p in m.prompts[:MAX_PROMPTS]], "features": feats}
    return _write(folder, index)


def graph_files(spec: str) -> list[Path]:
    """A folder (every ``*.json`` under it) or a glob pattern (``runs/**/*.json``) → files."""
    p = Path(spec)
    files = sorted(p.rglob("*.json")) if p.is_dir() else sorted(Path(f) for f in globlib.glob(spec, recursive=True))
    files = [f for f in files if f.is_file() and f.name != INDEX_JSON]
    if not files:
        raise ValueError(f"--graphs {spec}: no graph JSON files there (give a folder or a glob such as 'runs/*.json')")
    return files


def index_graphs(folder: "str | Path", spec: str) -> tuple[list[Path], list[Path]]:
    """``mechscope features --graphs``: index every graph file of ``spec`` holding features of
    this browser. The page next to a graph (``x.json`` → ``x.html``) is linked; where there is
    none it is written (its feature nodes linking back here). Returns (pages linked, files that
    are not graphs)."""
    from mechscope.apps.graph_viewer import browser_links, write_graph_html

    folder = Path(folder)
    linked, skipped = [], []
    for path in graph_files(spec):
        try:
            graph = Graph.load(path)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            skipped.append(path)
            continue
        if not feature_nodes(graph, index=read_index(folder)):
            continue
        page = path.with_suffix(".html")
        if not page.is_file():
            write_graph_html(graph, page, feature_url=browser_links(folder, page))
        record_graph(folder, page, graph)
        linked.append(page)
    return linked, skipped
