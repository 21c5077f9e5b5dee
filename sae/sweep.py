"""Sweeps: a grid of dictionaries trained at once on one data stream.

Each batch is read once and fed to every run (one model forward would feed them all), so a sweep
of R configs costs one stream instead of R. Runs share nothing but the batch: each has its own
weights, optimiser and generator (seeded from its own config), so every run ends exactly where
the same config trained alone on the same stream ends. Results: one row per run (the swept
hyper-parameters and the last logged metrics, and the held-out evaluation when a job adds it),
`RunResult.row`, in ``results.csv`` and ``results.json``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mechscope.files import write_text
from mechscope.sae.config import RunConfig, expand_sweep
from mechscope.sae.distributed import World, barrier
from mechscope.sae.trainer import CHECKPOINT, Run, TrainResult, TrainStep, fit

if TYPE_CHECKING:
    from mechscope.sae.splice_eval import HeldoutEval


@dataclass(frozen=True)
class RunResult:
    """One run of a sweep: its name, config, last logged training step, held-out evaluation (None
    until a job evaluates it), folder, and the fields swept (the config columns of its row)."""

    name: str
    config: RunConfig
    train: TrainStep
    eval: "HeldoutEval | None"
    path: Path
    swept: tuple[str, ...] = ()

    def row(self) -> dict[str, Any]:
        """The flat row of ``results.{csv,json}``: run, swept fields, training metrics, ``eval_*``."""
        flat = self.config.to_dict()
        row = {"run": self.name, **{k: flat[k] for k in self.swept if k in flat}, **self.train.to_dict()}
        return {**row, **(self.eval.row() if self.eval is not None else {})}


@dataclass(frozen=True)
class SweepResult:
    runs: list[TrainResult]
    results: list[RunResult]
    out_dir: Path

    @property
    def table(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.results]


def swept_fields(configs: Sequence[RunConfig]) -> list[str]:
    """Fields whose value differs between the configs that have them, in declaration order."""
    flats = [c.to_dict() for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if len({json.dumps(f[k]) for f in flats if k in f}) > 1]


def run_names(configs: Sequence[RunConfig]) -> list[str]:
    """``run000_k=8_lr=0.001``: folder names; a swept string value keeps only ``[A-Za-z0-9._+-]``
    (at most 40 of them), so no value can name a path outside the sweep's folder."""
    keys = swept_fields(configs)
    flats = [c.to_dict() for c in configs]
    return [f"run{i:03d}" + "".join(f"_{k}={_safe(f[k])}" for k in keys if k in f) for i, f in enumerate(flats)]


def _safe(value: Any) -> str:
    text = re.sub(r"[^A-Za-z0-9._+-]", "-", str(value))[:40]
    return text.replace("..", "--")


def train_sweep(configs: Sequence[RunConfig] | Mapping[str, Any], source: Iterable[Any],
                out_dir: str | Path, resume: bool = True, metadata: Mapping[str, Any] | None = None,
                device: "str | Any" = "cpu", world: World = World()) -> SweepResult:
    """Train every config (or the grid of a mapping with list values) on one stream.

    Writes ``out_dir/checkpoint.safetensors`` (all runs), ``out_dir/runs/<name>/{metrics.jsonl,
    dictionary/}`` and ``out_dir/results.{csv,json}``; ``metadata`` (what the stream is: model
    name, context size, ... in SAELens' names) goes into every saved dictionary's configs. Every
    run lives on ``device``; runs may read different sites of the stream's batches (``site_in``
    swept: several sites per forward).

    Several processes (``world``, `mechscope.sae.distributed`): one config trains data-parallel
    (``source`` yields global batches; each rank trains on its slice; a source with
    ``share_work`` — model streams, caches, shuffle buffers over them — computes or reads only
    this rank's share of the rows and receives the rest); several configs are sharded over the
    ranks (run ``i`` on rank ``i mod W``, each rank reading the whole stream for its runs).
    ``results`` then lists this rank's runs, and rank 0 writes the table of all of them.
    """
    from mechscope.sae.io import save_dictionary

    configs = expand_sweep(configs) if isinstance(configs, Mapping) else list(configs)
    if not configs:
        raise ValueError("a sweep needs at least one config")
    out = Path(out_dir)
    names = run_names(configs)
    keys = tuple(swept_fields(configs))
    data_parallel = world.distributed and len(configs) == 1
    mine = list(range(len(configs))) if not world.distributed or data_parallel else \
        list(range(world.rank, len(configs), world.size))
    if resume and (world.distributed or out.is_dir()):
        from mechscope.sae.distributed import check_checkpoint_layout

        check_checkpoint_layout(out, world, sharded=world.distributed and not data_parallel)
    runs = [Run.new(configs[i], out / "runs" / names[i], device) for i in mine]
    writer = world.main or not data_parallel
    if data_parallel:
        from mechscope.sae.distributed import DataParallel, RankSlice

        if hasattr(source, "share_work"):  # each rank computes / reads a disjoint share of the rows
            source.share_work(world)
        start = fit(runs, RankSlice(source, world), out / CHECKPOINT, resume, DataParallel(world),
                    world.size, writer)
    elif runs:
        ckpt = out / (CHECKPOINT if not world.distributed else f"checkpoint.rank{world.rank}.safetensors")
        start = fit(runs, source, ckpt, resume, world_size=world.size)
    else:
        start = 0
    if writer:
        for r in runs:
            save_dictionary(r.model, r.out_dir / "dictionary", dict(metadata or {}))
    trained = [TrainResult(r.model, r.cfg, r.last, r.out_dir, start) for r in runs]
    results = [RunResult(r.out_dir.name, r.cfg, r.last, None, r.out_dir, keys) for r in runs]
    barrier(world)
    if world.main:
        write_table(sweep_rows(configs, out, keys) if world.distributed else [r.row() for r in results], out)
    return SweepResult(trained, results, out)


def sweep_rows(configs: Sequence[RunConfig], out: Path, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Result rows of every run of a sweep read back from the run folders (what other ranks
    trained): ``eval.json`` when the job wrote one, else the last ``metrics.jsonl`` line."""
    rows = []
    for c, name in zip(configs, run_names(configs)):
        folder = out / "runs" / name
        if (folder / "eval.json").is_file():
            rows.append(json.loads((folder / "eval.json").read_text()))
            continue
        last = (folder / "metrics.jsonl").read_text().splitlines()[-1]
        rows.append(RunResult(name, c, TrainStep.from_dict(json.loads(last)), None, folder, keys).row())
    return rows


def write_table(table: list[dict[str, Any]], out_dir: Path) -> None:
    """``results.json`` and ``results.csv`` (columns: every key of every row, in first-seen order)."""
    write_text(out_dir / "results.json", json.dumps(table, indent=2))  # NaN metrics stay readable
    columns = list(dict.fromkeys(k for row in table for k in row))
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    w.writerows(table)
    write_text(out_dir / "results.csv", f.getvalue())
