"""Sweeps: a grid of dictionaries trained at once on one data stream.

Each batch is read once and fed to every run (one model forward would feed them all), so a sweep
of R configs costs one stream instead of R. Runs share nothing but the batch: each has its own
weights, optimiser and generator (seeded from its own config), so every run ends exactly where
the same config trained alone on the same stream ends. Results: one row per run (the swept
hyper-parameters and the last logged metrics) in ``results.csv`` and ``results.json``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mechscope.sae.config import TrainConfig, expand_sweep
from mechscope.sae.trainer import CHECKPOINT, Run, TrainResult, fit


@dataclass(frozen=True)
class SweepResult:
    runs: list[TrainResult]
    table: list[dict[str, Any]]
    out_dir: Path


def swept_fields(configs: Sequence[TrainConfig]) -> list[str]:
    """Fields whose value differs between configs, in declaration order."""
    first = configs[0].to_dict()
    return [k for k in first if any(c.to_dict()[k] != first[k] for c in configs)]


def run_names(configs: Sequence[TrainConfig]) -> list[str]:
    keys = swept_fields(configs)
    return [f"run{i:03d}" + "".join(f"_{k}={getattr(c, k)}" for k in keys) for i, c in enumerate(configs)]


def train_sweep(configs: Sequence[TrainConfig] | Mapping[str, Any], source: Iterable[Any],
                out_dir: str | Path, resume: bool = True) -> SweepResult:
    """Train every config (or the grid of a mapping with list values) on one stream.

    Writes ``out_dir/checkpoint.safetensors`` (all runs), ``out_dir/runs/<name>/{metrics.jsonl,
    dictionary/}`` and ``out_dir/results.{csv,json}``.
    """
    from mechscope.sae.io import save_dictionary

    configs = expand_sweep(configs) if isinstance(configs, Mapping) else list(configs)
    if not configs:
        raise ValueError("a sweep needs at least one config")
    out = Path(out_dir)
    runs = [Run.new(c, out / "runs" / name) for c, name in zip(configs, run_names(configs))]
    start = fit(runs, source, out / CHECKPOINT, resume)
    results, keys = [], swept_fields(configs)
    for r in runs:
        save_dictionary(r.model, r.out_dir / "dictionary")
        results.append(TrainResult(r.model, dict(r.last), r.out_dir, start))
    table = [{"run": r.out_dir.name, **{k: getattr(r.cfg, k) for k in keys}, **r.last} for r in runs]
    write_table(table, out)
    return SweepResult(results, table, out)


def write_table(table: list[dict[str, Any]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(table, indent=2))
    columns = list(dict.fromkeys(k for row in table for k in row))
    with (out_dir / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(table)
