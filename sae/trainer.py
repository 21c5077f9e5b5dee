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

Every step reports a `TrainStep` (loss and its named terms, L0, FVU, dead fraction, lr) as
0-d tensors, so a step forces no device sync; ``log_every`` steps are written to
``metrics.jsonl``.

Public API: `train(config, source, out_dir, resume=True) -> TrainResult` and
`mechscope.sae.sweep.train_sweep(configs, source, out_dir)`; both call `fit`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from mechscope.files import write_text
from mechscope.sae.base import SparseDictionary, fvu
from mechscope.sae.batches import as_pair
from mechscope.sae.checkpoint import load_checkpoint, save_checkpoint
from mechscope.sae.config import LOOP_FIELDS, RunConfig, TrainConfig
from mechscope.sae.factory import build_dictionary

if TYPE_CHECKING:
    from mechscope.sae.distributed import DataParallel

CHECKPOINT = "checkpoint.safetensors"


class TrainStep(NamedTuple):
    """What one training step reports; ``step`` counts the steps done (1 after the first).

    Tensor fields are detached 0-d tensors (no device sync until read); ``terms`` are the
    architecture's named loss terms (``mse``, ``aux``, ``l1``, ...). `metrics` is the flat line
    of ``metrics.jsonl`` (without ``step`` and ``time``).
    """

    step: int
    lr: float
    loss: Tensor
    l0: Tensor
    fvu: Tensor
    dead_fraction: Tensor
    terms: dict[str, Tensor]

    def metrics(self) -> dict[str, float]:
        return {"loss": float(self.loss), "l0": float(self.l0), "fvu": float(self.fvu),
                "dead_fraction": float(self.dead_fraction), "lr": self.lr,
                **{k: float(v) for k, v in self.terms.items()}}

    def to_dict(self) -> dict[str, float | int]:
        return {"step": self.step, **self.metrics()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainStep":
        """Back from a ``metrics.jsonl`` line (``time`` ignored)."""
        fixed = ("step", "time", "lr", "loss", "l0", "fvu", "dead_fraction")
        def scalar(v: Any) -> Tensor:
            return torch.tensor(v, dtype=torch.float64)  # holds the logged float exactly

        return cls(int(d["step"]), float(d["lr"]), **{k: scalar(d[k]) for k in ("loss", "l0", "fvu", "dead_fraction")},
                   terms={k: scalar(v) for k, v in d.items() if k not in fixed})


@dataclass
class Run:
    """One dictionary being trained: its config, module, optimiser, generator and output folder."""

    cfg: RunConfig
    model: SparseDictionary
    opt: torch.optim.Optimizer
    gen: torch.Generator
    out_dir: Path
    last: TrainStep | None = None  # the last logged step

    @classmethod
    def new(cls, cfg: RunConfig, out_dir: str | Path, device: "str | torch.device | None" = "cpu") -> "Run":
        """Weights initialised on the CPU (the same numbers on every device), then moved to
        ``device`` (``"auto"``: CUDA when present) in ``cfg.train.dtype``; the optimiser state
        follows the parameters. The generator stays on the CPU so random choices do not depend
        on the device."""
        from mechscope.devices import resolve_device, resolve_dtype

        t = cfg.train
        model = build_dictionary(cfg.dictionary, t)
        model.to(device=resolve_device(device), dtype=resolve_dtype(t.dtype))
        opt = torch.optim.Adam(model.param_groups(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), fused=True)
        return cls(cfg, model, opt, torch.Generator().manual_seed(t.seed + 1), Path(out_dir))

    @property
    def device(self) -> torch.device:
        return self.model.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.W_dec.dtype


@dataclass(frozen=True)
class TrainResult:
    """The trained dictionary, its config, last logged step, where it was saved, the step resumed from."""

    dictionary: SparseDictionary
    config: RunConfig
    last: TrainStep
    out_dir: Path
    resumed_from: int

    @property
    def metrics(self) -> dict[str, float | int]:
        """The last line of ``metrics.jsonl`` without its time: ``step`` and `TrainStep.metrics`."""
        return self.last.to_dict()


class NonFiniteError(ValueError):
    """NaN or inf in a batch, the loss or the weights: training stops before saving anything."""


def check_finite(x: torch.Tensor, step: int, site: str) -> None:
    """Refuse a batch with NaN / inf rows, naming the step, the site and the first rows."""
    bad = ~torch.isfinite(x).all(dim=-1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise NonFiniteError(f"step {step + 1}: the batch at site {site} has NaN or inf in {len(rows)} of "
                             f"{len(x)} rows (rows {rows[:5]}{' ...' if len(rows) > 5 else ''}); training "
                             "stopped, the last checkpoint is kept")


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = int(cfg.decay_fraction * cfg.steps)
    start = cfg.steps - decay_steps
    if decay_steps and step >= start:
        return cfg.lr * (cfg.steps - step) / decay_steps
    return cfg.lr


def train_step(run: Run, x_in: Tensor, x_out: Tensor, step: int, dp: "DataParallel | None" = None) -> TrainStep:
    """One optimiser step on a batch; ``dp`` reduces gradients and firing across data-parallel ranks."""
    m, cfg = run.model, run.cfg.train
    lr = lr_at(cfg, step)
    for group in run.opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    xi, xo = x_in * m.scale_in, x_out * m.scale_out
    with torch.autocast(run.device.type, dtype=_autocast_dtype(cfg), enabled=bool(cfg.autocast)):
        out = m.loss(xi, xo, step)
    run.opt.zero_grad(set_to_none=True)
    out.loss.backward()
    if dp is not None:
        dp.average_grads(m)
    m.remove_parallel_grad()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip)
    run.opt.step()
    m.project_decoder()
    m.update_firing(out.code, reduce=dp.fired if dp is not None else None)
    m.after_step(xi, xo, run.gen)
    with torch.no_grad():
        return TrainStep(step + 1, lr, out.loss.detach(), out.code.l0().float().mean(),
                         fvu(out.x_hat.detach(), xo), m.dead_mask().float().mean(), dict(out.terms))


def _autocast_dtype(cfg: TrainConfig) -> torch.dtype | None:
    from mechscope.devices import resolve_dtype

    return resolve_dtype(cfg.autocast) if cfg.autocast else None


class _Pairs:
    """``(x_in, x_out)`` of one batch per run: split by the run's sites, moved to its device and
    dtype once per distinct (sites, device, dtype), so runs at one site share the tensors."""

    def __init__(self, batch: Any, step: int) -> None:
        self.batch, self.step, self.cache = batch, step, {}

    def __call__(self, run: Run) -> tuple[Tensor, Tensor]:
        d = run.cfg.dictionary
        key = (d.site_in, d.site_out, d.transcoder, run.device, run.dtype)
        if key not in self.cache:
            x_in, x_out = as_pair(self.batch, d, run.dtype)
            # one device sync per site and step: a NaN row must stop training at its own step, naming it
            check_finite(x_in, self.step, d.site_in or "site_in")
            if x_out is not x_in:
                check_finite(x_out, self.step, d.site_out or "site_out")
            self.cache[key] = (x_in.to(run.device, non_blocking=True), x_out.to(run.device, non_blocking=True))
        return self.cache[key]


def fit(runs: Sequence[Run], source: Iterable[Any], checkpoint: Path, resume: bool = True,
        dp: "DataParallel | None" = None, world_size: int = 1, writer: bool = True) -> int:
    """Train every run on each batch of ``source``; returns the step training resumed from.

    Runs may read different sites of the batch (several sites from one forward) and live on
    different devices; they step together, so they agree on the loop fields (steps, logging,
    checkpoints).

    Data parallel (``dp``, see `mechscope.sae.distributed`): ``source`` yields this rank's slice
    of each global batch; the first global batch is gathered for the data initialisation; only
    the ``writer`` writes the checkpoint (recording ``world_size``) and the metrics.
    """
    flat0 = runs[0].cfg.to_dict()
    for r in runs:
        flat = r.cfg.to_dict()
        bad = [f for f in LOOP_FIELDS if flat.get(f) != flat0.get(f)]
        if bad:
            raise ValueError(f"runs trained on one stream must agree on {bad}")
    cfg0 = runs[0].cfg.train
    if dp is not None:
        from mechscope.sae.base import SparseDictionary

        local = [r.architecture for r in runs if type(r.model).after_step is not SparseDictionary.after_step]
        if local:
            raise ValueError(f"architecture {local[0]} cannot train data-parallel (its training hook "
                             "uses the rank's own rows); train it in one process or as part of a sweep")
    start, it = 0, None
    if resume and checkpoint.exists():
        meta = load_checkpoint(checkpoint, runs)
        start = meta["step"]
        it = _resumed_iter(source, meta["source"], start)
    it = it if it is not None else iter(source)
    logs = [_MetricsLog(r, start) if writer else None for r in runs]
    from tqdm.auto import tqdm

    bar = tqdm(range(start, cfg0.steps), initial=start, total=cfg0.steps, disable=not (cfg0.progress and writer),
               desc="train", dynamic_ncols=True)
    for step in bar:
        try:
            pairs = _Pairs(next(it), step)
        except StopIteration:
            raise RuntimeError(f"data source ran out at step {step} of {cfg0.steps}") from None
        if step == 0:
            for r in runs:
                x_in, x_out = pairs(r)
                if dp is not None:  # the global batch, as one process would see it
                    x_in, x_out = dp.gather_rows(x_in), dp.gather_rows(x_out)
                r.model.init_from_data(x_in, x_out)
        measure = (step + 1) % cfg0.log_every == 0 or step + 1 == cfg0.steps
        for r, log in zip(runs, logs):
            reported = train_step(r, *pairs(r), step, dp)
            if measure:  # the metrics are read here anyway: no extra device sync
                if dp is not None:
                    reported = reported._replace(loss=dp.mean(reported.loss), l0=dp.mean(reported.l0),
                                                 fvu=dp.mean(reported.fvu))
                if not bool(torch.isfinite(reported.loss)):
                    raise NonFiniteError(f"step {step + 1}, run {r.out_dir.name}: the loss is {float(reported.loss)} "
                                         "on finite batches (training diverged; lower sae.lr); the last "
                                         "checkpoint is kept")
                r.last = reported
                if log is not None:
                    log.write(reported)
        if measure:
            bar.set_postfix({k: f"{float(getattr(runs[0].last, k)):.3g}" for k in ("loss", "l0", "fvu", "dead_fraction")})
        done = step + 1
        if done == cfg0.steps or (cfg0.checkpoint_every and done % cfg0.checkpoint_every == 0):
            for r in runs:  # never replace the last good checkpoint with a diverged one
                bad = [n for n, p in r.model.named_parameters() if not bool(torch.isfinite(p).all())]
                if bad:
                    raise NonFiniteError(f"step {done}, run {r.out_dir.name}: parameters {', '.join(bad)} are "
                                         "no longer finite (training diverged; lower sae.lr); the last "
                                         "checkpoint is kept")
            if writer:
                save_checkpoint(checkpoint, runs, done, _source_state(source, done), world_size)
            if dp is not None:  # no rank runs ahead of a checkpoint it could be resumed from
                dp.dist.barrier()
    for log in logs:
        if log is not None:
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
        write_text(self.path, "".join(ln + "\n" for ln in kept))  # a crash here keeps the old log
        if kept:  # a run resumed at its end still reports its last metrics
            run.last = TrainStep.from_dict(json.loads(kept[-1]))
        self.wandb = None
        if run.cfg.train.wandb_project:
            import wandb

            self.wandb = wandb.init(project=run.cfg.train.wandb_project, name=run.out_dir.name,
                                    config=run.cfg.to_dict(), reinit=True)

    def write(self, reported: TrainStep) -> None:
        self.run.last = reported
        metrics = reported.metrics()
        with self.path.open("a") as f:
            f.write(json.dumps({"step": reported.step, "time": time.time(), **metrics}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=reported.step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def train(config: RunConfig, source: Iterable[Any], out_dir: str | Path, resume: bool = True,
          metadata: dict[str, Any] | None = None, device: "str | torch.device | None" = "cpu") -> TrainResult:
    """Train one dictionary; writes ``out_dir/{checkpoint.safetensors, metrics.jsonl, dictionary/}``.

    With ``resume`` and an existing checkpoint, training continues from it (same config
    required) and ends bitwise identical to an uninterrupted run. ``metadata`` (model name,
    context size, ... in SAELens' names) is saved with the dictionary.
    """
    from mechscope.sae.io import save_dictionary

    out = Path(out_dir)
    run = Run.new(config, out, device)
    start = fit([run], source, out / CHECKPOINT, resume)
    save_dictionary(run.model, out / "dictionary", metadata)
    return TrainResult(run.model, config, run.last, out, start)
