"""Benchmark: recovery of planted parent / child features per architecture (synthetic hierarchy).

Data: `mechscope.sae.synthetic.HierarchicalSource` — P parents, each active with probability p
and then bringing exactly one of its C children, whose direction has cosine ``child_cosine`` with
the parent (the setting of Costa et al. 2025, MP-SAE, and of feature absorption, Chanin et al.
2024). Every architecture trains on the same batches at the same sparsity (k = 2 active latents
per row, the true L0; JumpReLU through its target-L0 loss) and width (d_dict = P·(C + 1), the
number of true features). Reported per architecture (`hierarchy_recovery`, held-out batches):
parent and child MMCS, the parent latents' absorption rate, held-out FVU and L0.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mechscope.sae.config import RunConfig
from mechscope.sae.evaluate import evaluate
from mechscope.sae.synthetic import HierarchicalSource, hierarchy_recovery
from mechscope.sae.trainer import train

ARCHS = ("topk", "batchtopk", "matryoshka", "mp", "jumprelu")


def _source(full: dict[str, Any], batch_size: int) -> HierarchicalSource:
    return HierarchicalSource(d=full["d"], n_parents=full["P"], n_children=full["C"], batch_size=batch_size,
                              p_parent=full["p"], child_cosine=full["cos"], seed=0)


def bench_hierarchy(quick: bool = False, archs: tuple[str, ...] = ARCHS) -> list[dict[str, Any]]:
    size = (dict(d=16, P=4, C=3, p=0.25, cos=0.7, steps=60) if quick
            else dict(d=32, P=8, C=4, p=0.125, cos=0.7, steps=1500))
    d_dict = size["P"] * (size["C"] + 1)
    k = 2  # a parent with its child; p·P = 1 parent per row on average, so mean L0 = 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            extra = {"jumprelu": dict(jumprelu_sparsity_loss="quadratic", jumprelu_target_l0=float(k),
                                      jumprelu_threshold_lr_scale=10.0),
                     "matryoshka": dict(matryoshka_widths=f"{size['P']},{d_dict}")}.get(arch, {})
            cfg = RunConfig.from_dict(dict(architecture=arch, d_in=size["d"], d_dict=d_dict, k=k,
                                           steps=size["steps"], lr=3e-3, progress=False, seed=0,
                                           log_every=max(1, size["steps"]), **extra))
            r = train(cfg, _source(size, 256), Path(tmp) / arch)
            held = _source(size, 1024)
            held.load_state_dict({"position": 10_000})
            e = evaluate(r.dictionary, held, n_batches=2)
            rec = hierarchy_recovery(r.dictionary, _source(size, 1024), n_batches=2)
            rows.append({"architecture": arch, **rec._asdict(), "fvu": e.fvu, "l0": e.l0})
    return rows


def format_hierarchy(rows: list[dict[str, Any]]) -> str:
    head = f"{'architecture':<12} {'parent MMCS':>11} {'child MMCS':>10} {'absorption':>10} {'FVU':>7} {'L0':>6}"
    lines = ["synthetic hierarchy: parents with mutually exclusive children (held-out batches)", head,
             "-" * len(head)]
    for r in rows:
        lines.append(f"{r['architecture']:<12} {r['parent_mmcs']:>11.3f} {r['child_mmcs']:>10.3f} "
                     f"{r['absorption_rate']:>10.3f} {r['fvu']:>7.3f} {r['l0']:>6.2f}")
    return "\n".join(lines)
