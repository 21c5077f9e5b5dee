"""The training loop: every architecture supplies its loss; one loop trains one or many runs.

Per step, for each run on the same batch (normalised units, see `mechscope.sae.base`):

    loss.backward();  g_W_dec ← g − <g, w> w (unit-norm decoders);  clip;  Adam step at lr(t);
    renormalise W_dec rows;  update the dead-latent counters;  architecture hook (dead codes)

``lr(t)`` is a linear warm-up over ``warmup_steps``, constant, then a linear decay to 0 over the
last ``decay_fraction`` of the steps (as in SAELens and Gao et al.). The first batch sets the
activation scales and ``b_dec`` (geometric median or mean) and is then trained on like every
other batch. Each run owns a `torch.Generator` seeded from its config, used for every random
choice after initialisation, so a run's result does not depend on the other runs of a sweep,
and its state is checkpointed so a resumed run is bitwise identical to an uninterrupted one.

Public API: `train(config, source, out_dir, resume=True) -> TrainResult` and
`mechscope.sae.sweep.train_sweep(configs, source, out_dir)`; both call `fit`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from mechscope.sae.base import SparseDictionary, fvu
from mechscope.sae.batches import as_pair
from mechscope.sae.checkpoint import load_checkpoint, save_checkpoint
from mechscope.sae.config import SHARED_FIELDS, TrainConfig
from mechscope.sae.factory import build_dictionary

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class Run:
    """One dictionary being trained: its config, module, optimiser, generator and output folder."""

    cfg: TrainConfig
    model: SparseDictionary
    opt: torch.optim.Optimizer
    gen: torch.Generator
    out_dir: Path
    last: dict[str, float | int] = field(default_factory=dict)  # "step" is an int

    @classmethod
    def new(cls, cfg: TrainConfig, out_dir: str | Path) -> "Run":
        model = build_dictionary(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                               fused=True)
        return cls(cfg, model, opt, torch.Generator().manual_seed(cfg.seed + 1), Path(out_dir))


@dataclass(frozen=True)
class TrainResult:
    """The trained dictionary, its last logged metrics, where it was saved, and the step resumed from."""

    dictionary: SparseDictionary
    metrics: dict[str, float | int]  # the floats of `train_step` plus the int "step"
    out_dir: Path
    resumed_from: int


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = int(cfg.decay_fraction * cfg.steps)
    start = cfg.steps - decay_steps
    if decay_steps and step >= start:
        return cfg.lr * (cfg.steps - step) / decay_steps
    return cfg.lr


def train_step(run: Run, x_in: torch.Tensor, x_out: torch.Tensor, step: int, measure: bool) -> dict[str, float]:
    m, cfg = run.model, run.cfg
    for group in run.opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    xi, xo = x_in * m.scale_in, x_out * m.scale_out
    out = m.loss(xi, xo, step)
    run.opt.zero_grad(set_to_none=True)
    out.loss.backward()
    m.remove_parallel_grad()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip)
    run.opt.step()
    m.project_decoder()
    m.update_firing(out.code)
    m.after_step(xi, xo, run.gen)
    if not measure:
        return {}
    return {"loss": float(out.loss.detach()), "l0": float(out.code.l0().mean()),
            "fvu": float(fvu(out.x_hat.detach(), xo)), "dead_fraction": float(m.dead_mask().float().mean()),
            "lr": run.opt.param_groups[0]["lr"], **{k: float(v) for k, v in out.terms.items()}}


def fit(runs: Sequence[Run], source: Iterable[Any], checkpoint: Path, resume: bool = True) -> int:
    """Train every run on each batch of ``source``; returns the step training resumed from."""
    cfg0 = runs[0].cfg
    for r in runs:
        bad = [f for f in SHARED_FIELDS if getattr(r.cfg, f) != getattr(cfg0, f)]
        if bad:
            raise ValueError(f"runs trained on one stream must agree on {bad}")
    start, it = 0, None
    if resume and checkpoint.exists():
        meta = load_checkpoint(checkpoint, runs)
        start = meta["step"]
        it = _resumed_iter(source, meta["source"], start)
    it = it if it is not None else iter(source)
    logs = [_MetricsLog(r, start) for r in runs]
    from tqdm.auto import tqdm

    bar = tqdm(range(start, cfg0.steps), initial=start, total=cfg0.steps, disable=not cfg0.progress,
               desc="train", dynamic_ncols=True)
    for step in bar:
        try:
            x_in, x_out = as_pair(next(it), cfg0)
        except StopIteration:
            raise RuntimeError(f"data source ran out at step {step} of {cfg0.steps}") from None
        if step == 0:
            for r in runs:
                r.model.init_from_data(x_in, x_out)
        measure = (step + 1) % cfg0.log_every == 0 or step + 1 == cfg0.steps
        for r, log in zip(runs, logs):
            metrics = train_step(r, x_in, x_out, step, measure)
            if measure:
                log.write(step + 1, metrics)
        if measure:
            bar.set_postfix({k: f"{runs[0].last[k]:.3g}" for k in ("loss", "l0", "fvu", "dead_fraction")})
        done = step + 1
        if done == cfg0.steps or (cfg0.checkpoint_every and done % cfg0.checkpoint_every == 0):
            save_checkpoint(checkpoint, runs, done, _source_state(source, done))
    for log in logs:
        log.close()
    return start


def _source_state(source: Any, consumed: int) -> Any:
    if hasattr(source, "state_dict"):
        return source.state_dict()
    return {"batches_consumed": consumed}


def _resumed_iter(source: Any, state: Any, step: int) -> Iterator[Any]:
    if hasattr(source, "load_state_dict"):
        source.load_state_dict(state)
        return iter(source)
    # a source without state is replayed from its start: exact only if it is deterministic
    it = iter(source)
    for _ in range(step):
        next(it)
    return it


class _MetricsLog:
    """Appends ``{"step", "time", metrics...}`` lines to ``out_dir/metrics.jsonl``; wandb if asked."""

    def __init__(self, run: Run, start: int) -> None:
        self.run = run
        run.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = run.out_dir / "metrics.jsonl"
        # lines past the checkpoint were written before a crash: the resumed run rewrites them
        kept = []
        if self.path.exists() and start > 0:
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
        self.path.write_text("".join(ln + "\n" for ln in kept))
        if kept:  # a run resumed at its end still reports its last metrics
            run.last = {k: v for k, v in json.loads(kept[-1]).items() if k != "time"}
        self.wandb = None
        if run.cfg.wandb_project:
            import wandb

            self.wandb = wandb.init(project=run.cfg.wandb_project, name=run.out_dir.name,
                                    config=run.cfg.to_dict(), reinit=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.run.last = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def train(config: TrainConfig, source: Iterable[Any], out_dir: str | Path, resume: bool = True) -> TrainResult:
    """Train one dictionary; writes ``out_dir/{checkpoint.safetensors, metrics.jsonl, dictionary/}``.

    With ``resume`` and an existing checkpoint, training continues from it (same config
    required) and ends bitwise identical to an uninterrupted run.
    """
    from mechscope.sae.io import save_dictionary

    out = Path(out_dir)
    run = Run.new(config, out)
    start = fit([run], source, out / CHECKPOINT, resume)
    save_dictionary(run.model, out / "dictionary")
    return TrainResult(run.model, dict(run.last), out, start)
