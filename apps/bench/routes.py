"""Benchmark: information flow routes vs activation patching of the same candidate edges.

Candidates are every attention edge ``(layer, head, source j -> destination i)`` of each prompt
(``j <= i``). Routes score all of them from one forward pass per batch (edge score: the flow of
``m^L_i`` from the prediction times the edge's share, from the route at ``tau = 0``, plus the
default-``tau`` route for timing). Patching scores each edge by zeroing ``A^{L,h}[i, j]`` in its
own forward pass (sent in batches of ``patch_batch`` sequences) and measuring ``|Δ logit|`` of the
predicted token. Reported: wall time and forward passes of each, their ratios, and the overlap
of the top-``k`` edges (fraction shared). No thresholds are asserted: it prints numbers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from mechscope.circuits.routes import extract_route, flow_contributions, mid_node
from mechscope.interp.capture import hooks_for
from mechscope.interp.models import Model

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

_FALLBACK = dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=256, d_vocab=4096,
                 act_fn="gelu_new", normalization_type="LN")


def _model() -> "tuple[Model, str]":
    from mechscope.interp.models import Model, load_model

    try:
        return load_model("gpt2-shakespeare"), "gpt2-shakespeare (zoo)"
    except Exception as exc:  # noqa: BLE001 - the zoo model may not be built on this machine
        return Model.from_config(_FALLBACK, name="random-gpt2-4L", seed=0), \
            f"random GPT-2 4L d128 (zoo model unavailable: {type(exc).__name__})"


def route_edge_scores(model: "ModelLike", tokens: torch.Tensor) -> list[dict[tuple, float]]:
    """Per prompt: ``{(L, h, i, j): flow share}`` for every attention edge (module doc)."""
    model = Model.wrap(model)
    c = flow_contributions(model, tokens)
    out = []
    for b in range(tokens.shape[0]):
        g = extract_route(c, b, tau=0.0)
        scores = {}
        for (s, t), w in g.edges.items():
            nd = g.nodes[t]
            if nd.kind == "head":
                mid = mid_node(nd.layer, nd.position, model.n_layers, model.attn_only)
                j = g.nodes[s].position
                scores[(nd.layer, nd.index, nd.position, j)] = g.nodes[mid.id].score * abs(w)
        out.append(scores)
    return out


def patch_edge_scores(model: "ModelLike", tokens: torch.Tensor, patch_batch: int = 256) -> tuple[list[dict], int, int]:
    """``|Δ logit|`` of the prediction when each edge's attention weight is zeroed; also the
    number of forward passes (sequences) and of batched calls."""
    model = Model.wrap(model)
    n_pos = tokens.shape[1]
    edges = [(L, h, i, j) for L in range(model.n_layers) for h in range(model.n_heads)
             for i in range(n_pos) for j in range(i + 1)]
    out, passes, calls = [], 0, 0
    with torch.no_grad():
        base = model(tokens)[:, -1]
        for b in range(tokens.shape[0]):
            pred = int(base[b].argmax())
            scores = {}
            for s in range(0, len(edges), patch_batch):
                chunk = edges[s: s + patch_batch]
                for L in sorted({e[0] for e in chunk}):
                    sub = [e for e in chunk if e[0] == L]
                    idx = torch.arange(len(sub))
                    hs, is_, js = (torch.tensor([e[k] for e in sub]) for k in (1, 2, 3))

                    def cut(p: torch.Tensor, hs=hs, is_=is_, js=js, idx=idx) -> torch.Tensor:
                        p = p.clone()
                        p[idx, hs, is_, js] = 0.0
                        return p

                    with hooks_for(model, {model.site(f"L{L}.pattern"): cut}):
                        logits = model(tokens[b: b + 1].expand(len(sub), -1))[:, -1, pred]
                    passes, calls = passes + len(sub), calls + 1
                    for e, v in zip(sub, (logits - base[b, pred]).abs().tolist()):
                        scores[e] = v
            out.append(scores)
    return out, passes, calls


def bench_routes(quick: bool = False, n_prompts: int | None = None, seq_len: int | None = None,
                 top_k: int = 20) -> dict[str, Any]:
    """Routes vs patching on a batch of prompts (module doc); returns the measurements."""
    torch.manual_seed(0)
    model, model_desc = _model()
    n_prompts = n_prompts or (2 if quick else 8)
    seq_len = seq_len or (8 if quick else 16)
    tokens = torch.randint(0, model.d_vocab, (n_prompts, seq_len), generator=torch.Generator().manual_seed(0))
    flow_contributions(model, tokens[:1])  # warm-up, outside the timings
    t0 = time.perf_counter()
    c = flow_contributions(model, tokens)
    routes = [extract_route(c, b) for b in range(n_prompts)]
    t_routes = time.perf_counter() - t0
    route_scores = route_edge_scores(model, tokens)
    t0 = time.perf_counter()
    patch_scores, passes, calls = patch_edge_scores(model, tokens)
    t_patch = time.perf_counter() - t0
    overlaps = []
    for rs, ps in zip(route_scores, patch_scores):
        top_r = set(sorted(rs, key=rs.get, reverse=True)[:top_k])
        top_p = set(sorted(ps, key=ps.get, reverse=True)[:top_k])
        overlaps.append(len(top_r & top_p) / top_k)
    return {
        "model": model_desc, "prompts": n_prompts, "seq_len": seq_len,
        "candidate_edges": sum(len(p) for p in patch_scores),
        "route_nodes_mean": sum(len(r.nodes) for r in routes) / n_prompts,
        "routes_s": t_routes, "routes_forward_passes": 1,
        "patch_s": t_patch, "patch_forward_passes": passes, "patch_batched_calls": calls,
        "time_ratio": t_patch / t_routes, "forward_ratio": passes / 1,
        "top_k": top_k, "top_k_overlap_mean": sum(overlaps) / len(overlaps),
        "threads": torch.get_num_threads(),
    }


def format_routes_bench(d: dict[str, Any]) -> str:
    return "\n".join([
        f"routes vs activation patching — {d['model']}, {d['prompts']} prompts x {d['seq_len']} tokens, "
        f"{d['candidate_edges']} candidate edges, {d['threads']} threads",
        f"  routes : {d['routes_s'] * 1e3:9.1f} ms, {d['routes_forward_passes']} forward pass(es), "
        f"{d['route_nodes_mean']:.0f} route nodes per prompt",
        f"  patch  : {d['patch_s'] * 1e3:9.1f} ms, {d['patch_forward_passes']} forward passes "
        f"({d['patch_batched_calls']} batched calls)",
        f"  ratio  : {d['time_ratio']:.0f}x wall time, {d['forward_ratio']:.0f}x forward passes (goal >= 50x)",
        f"  top-{d['top_k']} edge overlap (routes vs patching): {d['top_k_overlap_mean']:.2f}",
    ])


if __name__ == "__main__":
    import sys

    print(format_routes_bench(bench_routes(quick="--quick" in sys.argv)))
