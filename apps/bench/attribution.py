"""Benchmark: finding the induction circuit by attribution vs by patching every candidate node.

Candidates are the per-position head nodes of ``attn-only-induction`` (``L0.z``, ``L1.z``; one
node per head and position) on ``[BOS] + x + x`` prompts, scored against the mean log-prob of
the repeated half with mean ablation. Attribution patching needs one forward and one backward
pass for all candidates; integrated gradients one batched ``steps x batch`` forward/backward per
site; activation patching one forward pass per candidate. Reported: wall time and model passes
of each (a pass = one forward or backward over the prompt batch; a batched IG pass over ``steps``
copies counts ``steps`` passes), their ratios against patching in the same run, and the Spearman
correlation of each method's scores with the patching effects.

Run as ``mechscope bench attribution`` or ``python -m mechscope.apps.bench.attribution``.
"""

from __future__ import annotations

import time
from typing import Any

from mechscope.circuits.attribution import node_scores
from mechscope.circuits.feature_circuits import full_graph
from mechscope.circuits.graph import node_id
from mechscope.circuits.known import INDUCTION_MODEL, induction_setup
from mechscope.circuits.verify import spearman, verify_nodes


def _passes(setup: Any, ig_steps: int = 1) -> int:
    c = setup._cache
    return (c.get("passes", 0) + c.get("backward", 0)) * ig_steps


def bench_attribution(quick: bool = False, steps: int = 10) -> dict[str, Any]:
    """Times, pass counts, ratios and agreement (see module doc)."""
    from mechscope.interp.models import load_model

    model = load_model(INDUCTION_MODEL)
    n, period = (2, 6) if quick else (8, 12)
    make = lambda: induction_setup(model, n_prompts=n, period=period)  # noqa: E731

    setup = make()
    t = time.perf_counter()
    atp = node_scores(setup, "atp")
    t_atp, p_atp = time.perf_counter() - t, _passes(setup)

    setup = make()
    t = time.perf_counter()
    ig = node_scores(setup, "ig", steps=steps)
    t_ig = time.perf_counter() - t
    c = setup._cache  # clean forward + backward, then one (forward, backward) of `steps` copies per site
    p_ig = 2 + (c["passes"] - 1 + c["backward"] - 1) * steps

    setup = make()
    graph = full_graph(setup, per_position=True)
    t = time.perf_counter()
    ids, effects = verify_nodes(graph, setup, per_pass=1)
    t_patch, p_patch = time.perf_counter() - t, _passes(setup)

    def flat(scores: dict) -> list[float]:
        by_id = {}
        for s, v in scores.items():
            mean = v.mean(0)  # [p, n]
            for pos in range(mean.shape[0]):
                for j in range(mean.shape[1]):
                    by_id[node_id("head", s.layer, j, position=pos)] = float(mean[pos, j])
        return [by_id[i] for i in ids]

    return {
        "model": INDUCTION_MODEL, "prompts": n, "seq_len": 2 * period + 1, "candidates": len(ids),
        "ig_steps": steps,
        "atp": {"seconds": t_atp, "passes": p_atp, "rank_corr_vs_patching": spearman(flat(atp), effects)},
        "ig": {"seconds": t_ig, "passes": p_ig, "rank_corr_vs_patching": spearman(flat(ig), effects)},
        "patching": {"seconds": t_patch, "passes": p_patch},
        "speedup_atp": t_patch / t_atp, "speedup_ig": t_patch / t_ig,
        "pass_ratio_atp": p_patch / p_atp, "pass_ratio_ig": p_patch / p_ig,
    }


def format_bench(res: dict[str, Any]) -> str:
    lines = [f"{res['model']}: {res['candidates']} candidate nodes (head x position), "
             f"{res['prompts']} prompts of {res['seq_len']} tokens",
             f"{'method':<22}{'seconds':>10}{'passes':>8}{'rank corr vs patching':>24}"]
    for key, label in (("atp", "attribution patching"), ("ig", f"IG ({res['ig_steps']} steps)"),
                       ("patching", "patch every node")):
        r = res[key]
        corr = r.get("rank_corr_vs_patching")
        lines.append(f"{label:<22}{r['seconds']:>10.3f}{r['passes']:>8}"
                     f"{'' if corr is None else f'{corr:.3f}':>24}")
    lines.append(f"patching / attribution patching: {res['speedup_atp']:.1f}x time, "
                 f"{res['pass_ratio_atp']:.1f}x passes")
    lines.append(f"patching / IG: {res['speedup_ig']:.1f}x time, {res['pass_ratio_ig']:.1f}x passes")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(format_bench(bench_attribution(quick="--quick" in sys.argv)))
