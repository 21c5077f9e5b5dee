"""``mechscope verify``: trace toy models with known circuits; precision, recall and causal checks."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from mechscope.apps.cli import command
from mechscope.apps.commands.common import device_options
from mechscope.circuits.verify import verify_task


def verify_all(quick: bool = False, methods: Iterable[str] = ("atp", "ig"), device: str = "cpu",
               dtype: str = "float32") -> list[dict[str, object]]:
    """Head-level circuits of the planted-copy and planted-induction models and of the zoo's
    induction model vs their known circuits (rows for `format_verify`); every model on
    ``device`` in ``dtype``."""
    from mechscope.circuits import known as kn
    from mechscope.interp.models import load_model

    n = 4 if quick else 16
    induction = load_model(kn.INDUCTION_MODEL, device=device, dtype=dtype)
    planted = kn.planted_copy_model().to(device, dtype)
    planted_ind = kn.planted_induction_model().to(device, dtype)
    rows = []
    for method in methods:
        rows.append(verify_task("planted-copy", kn.planted_setup(planted, n_prompts=n),
                                kn.PLANTED.components, method))
        rows.append(verify_task("planted-induction", kn.induction_setup(planted_ind, n_prompts=n, period=7),
                                kn.PLANTED_INDUCTION.components, method))
        rows.append(verify_task("induction", kn.induction_setup(induction, n_prompts=n),
                                kn.induction_circuit(induction.card or None).components, method))
    return rows


def format_verify(rows: list[dict[str, object]]) -> str:
    cols = ("task", "method", "ablation", "precision", "recall", "f1", "faithfulness",
            "completeness", "node_rank_corr", "edge_rank_corr", "edge_sign_agreement", "nodes", "edges")
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    table = [cols] + [tuple(fmt(r.get(c, float("nan"))) for c in cols) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(t, widths)) for t in table]
    lines += [f"{r['task']}/{r['method']}: found {r['found']} missed {r['missed']} extra {r['extra']}"
              for r in rows]
    return "\n".join(lines)


def planted_table(tasks: Iterable[str] = ("copy", "inert", "saturated", "bidirectional", "mlp"),
                  methods: Iterable[str] | None = None, n_prompts: int = 4) -> str:
    """Method x planted model: precision, recall and sign agreement with path patching at each
    method's defaults (`circuits.known_truth`)."""
    from mechscope.circuits import planted
    from mechscope.circuits.known_truth import METHODS, evaluate

    rows = [("model", "method", "precision", "recall", "sign_agreement", "found")]
    for name in tasks:
        t = planted.task(name, n_prompts=n_prompts)
        for m in methods or METHODS:
            r = evaluate(name, t, m)
            sign = "n/a" if r.sign_agreement is None else f"{r.sign_agreement:.2f}"
            rows.append((name, m, f"{r.precision:.2f}", f"{r.recall:.2f}", sign, " ".join(r.found) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _verify_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer prompts (seconds)")
    p.add_argument("--planted", action="store_true",
                   help="instead: every method at its defaults on the planted models (inert writer, "
                        "saturated readout, bidirectional attention, MLP path): precision, recall and "
                        "sign agreement with path patching")
    device_options(p)


@command("verify", "Trace toy models with known circuits and print precision / recall and causal agreement.", _verify_options)
def verify_cmd(args: argparse.Namespace) -> int:
    print(planted_table() if args.planted else
          format_verify(verify_all(quick=args.quick, device=args.device, dtype=args.dtype)))
    return 0
