"""Crash-safe checkpoints of a set of training runs, for exact resume.

One checkpoint is one safetensors file: every run's weights and buffers (``run{i}.model.*``), its
Adam state (``run{i}.opt.{param}.{name}``) and its random-generator state (``run{i}.rng``); the
safetensors header metadata carries JSON for the rest (step, data-source position, optimiser
param groups, configs). It is written to a temporary file in the same folder and moved into
place with ``os.replace`` (atomic on POSIX), so a crash leaves either the old or the new
checkpoint, never a torn one. Nothing is pickled. Tensors are saved from CPU copies and loaded
onto the CPU, then copied into the runs' parameters and optimiser state (on their own device and
dtype): a checkpoint written on a GPU resumes on the CPU and the other way round. The LR schedule is a pure function of the step,
so restoring the step restores the scheduler.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from mechscope.files import atomic_path
from mechscope.tensors import load_checked
from mechscope.state import cpu_copy as _cpu, join_tensors as _join_tensors, split_tensors as _split_tensors

FORMAT = 1


def save_checkpoint(path: Path, runs: Sequence[Any], step: int, source_state: Any, world_size: int = 1) -> None:
    """``runs``: objects with ``.model``, ``.opt``, ``.gen``, ``.cfg`` (see trainer.Run)."""
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for i, r in enumerate(runs):
        for k, v in r.model.state_dict().items():
            tensors[f"run{i}.model.{k}"] = _cpu(v)
        sd = r.opt.state_dict()
        for p, state in sd["state"].items():
            for name, v in state.items():
                tensors[f"run{i}.opt.{p}.{name}"] = _cpu(v)
        groups.append(sd["param_groups"])
        tensors[f"run{i}.rng"] = r.gen.get_state()
    source = _split_tensors(source_state, "source", tensors)
    meta = {"format": FORMAT, "step": step, "source": source, "param_groups": groups, "world_size": world_size,
            "configs": [r.cfg.to_dict() for r in runs]}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"mechscope": json.dumps(meta)})


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["mechscope"])
        tensors = load_file(str(path), device="cpu")  # map_location: see _cpu
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise ValueError(f"{path} is not a readable mechscope checkpoint ({type(e).__name__}: {e}); "
                         "delete it or train with resume=False") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')} is not {FORMAT}")
    return meta, tensors


def load_checkpoint(path: Path, runs: Sequence[Any]) -> dict[str, Any]:
    """Restore every run in place; returns the metadata (``step``, ``source``). A data-parallel
    checkpoint resumes with any number of processes (``world_size`` records who wrote it): its
    stream position is a position in global batches and its state is the same on every rank."""
    meta, tensors = read_checkpoint(path)
    saved = meta["configs"]
    if len(saved) != len(runs) or any(s != r.cfg.to_dict() for s, r in zip(saved, runs)):
        raise ValueError(f"{path} was written for different configs; resume needs the same "
                         "configs (or train with resume=False / another out_dir)")
    for i, r in enumerate(runs):
        pre = f"run{i}.model."
        load_checked(r.model, {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}, path)
        state: dict[int, dict[str, torch.Tensor]] = {}
        pre = f"run{i}.opt."
        for k, v in tensors.items():
            if k.startswith(pre):
                p, name = k[len(pre):].split(".", 1)
                state.setdefault(int(p), {})[name] = v
        r.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][i]})
        r.gen.set_state(tensors[f"run{i}.rng"])
    meta["source"] = _join_tensors(meta["source"], tensors)
    return meta
