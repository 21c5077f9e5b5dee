"""The one language-model training loop: zoo recipes (pre-training) and Codebook Features
fine-tuning call it.

Objective: the mean next-token cross-entropy (nats)

    L_LM = −1/N Σ_t m_{t+1} log p(x_{t+1} | x_{≤t}),      N = Σ_t m_{t+1},

where the optional mask ``m`` marks the targets that count (all of them by default), plus any
extra terms a caller adds through ``aux_loss`` (the codebook and commitment terms of
`mechscope.sae.codebook_features.model.CodebookModel`, Tamkin et al. 2023, section 3).

Optimiser: AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019) with the schedule

    lr(s) = lr · (s + 1) / warmup                                 for s < warmup,
    lr(s) = lr · (r + (1 − r) · (1 + cos(π u)) / 2),  u = (s − warmup) / (steps − warmup),

``r = min_lr_ratio``; the gradient norm is clipped to ``grad_clip``. Every random draw (batches,
whatever ``after_step`` re-seeds) comes from one ``torch.Generator`` seeded by ``cfg.seed``, so a
run is deterministic on a given machine and thread count.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor, nn

from mechscope.records import checked_fields
from mechscope.interp.tokens import window_batches


class LMBatch(NamedTuple):
    """Training rows and, optionally, the target positions that count in the loss."""

    tokens: Int[Tensor, "b pos"]
    mask: Bool[Tensor, "b pos"] | None = None


Sampler = Callable[[torch.Generator], "Int[Tensor, 'b pos'] | LMBatch"]


@dataclass(frozen=True)
class LMTrainConfig:
    """Optimisation of a language model (pre-training) or of a codebook model (fine-tuning)."""

    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}]")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas!r} must be two numbers in [0, 1)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LMTrainConfig":
        checked_fields(cls, data, "training")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {k: float(v) if types[k] == "float" and isinstance(v, int) else v for k, v in data.items()}
        if isinstance(values.get("betas"), (list, tuple)):  # TOML gives a list
            values["betas"] = tuple(float(b) for b in values["betas"])
        return cls(**values)


@dataclass(frozen=True)
class LMTrainResult:
    """What a run did: the logged rows (``step``, ``lm_loss``, ``aux_loss``, ``lr``,
    ``tokens_per_s`` and the ``after_step`` metrics), every step's LM loss, tokens and time."""

    rows: list[dict[str, Any]]
    losses: list[float]
    tokens_seen: int
    seconds: float


def lr_factor(step: int, warmup: int, steps: int, min_ratio: float) -> float:
    """``lr(step) / lr`` of the schedule in the module docstring."""
    if step < warmup:
        return (step + 1) / warmup
    u = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(u, 1.0)))


def next_token_loss(logits: Tensor, tokens: Int[Tensor, "b s"],
                    mask: Bool[Tensor, "b s"] | None = None) -> Tensor:
    """Mean CE of predicting ``tokens[:, 1:]``; ``mask`` marks the target positions that count."""
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(),
                         reduction="none").view(tokens.shape[0], -1)
    if mask is None:
        return ce.mean()
    m = mask[:, 1:].float()
    return (ce * m).sum() / m.sum().clamp(min=1)


def decay_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """GPT-style AdamW groups: decay on weight matrices, none on biases, norms and ``W_pos``."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    decays = [p.ndim >= 2 and "W_pos" not in n for n, p in named]
    return [{"params": [p for (_, p), d in zip(named, decays) if d], "weight_decay": weight_decay},
            {"params": [p for (_, p), d in zip(named, decays) if not d], "weight_decay": 0.0}]


def _module(net: Any) -> nn.Module:
    """An ``nn.Module`` mapping tokens to logits: ``net`` itself, or a `Model`'s network."""
    from mechscope.interp.models import Model

    return net if isinstance(net, nn.Module) else Model.wrap(net).module


def train_lm(net: Any, sample: Sampler, cfg: LMTrainConfig, *,
             params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
             aux_loss: Callable[[], Tensor] | None = None,
             after_step: Callable[[torch.Generator], Mapping[str, Any]] | None = None,
             log: Callable[[dict[str, Any]], None] | None = None) -> LMTrainResult:
    """Train ``net`` (a `Model` or any module mapping tokens to logits) on batches from ``sample``.

    ``params``: the tensors or AdamW groups to optimise (default: every trainable parameter, one
    group with ``cfg.weight_decay``). ``aux_loss()`` is added to the LM loss after each forward;
    ``after_step(generator)`` runs after each optimiser step and its metrics join the logged rows.
    """
    module = _module(net)
    gen = torch.Generator().manual_seed(cfg.seed)
    groups = list(params) if params is not None else [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    clipped = [p for p in module.parameters() if id(p) in optimised]  # module order: reproducible norm
    rows: list[dict[str, Any]] = []
    losses: list[float] = []
    tokens_seen, t0 = 0, time.perf_counter()
    module.train()
    for step in range(cfg.steps):
        lr = cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = sample(gen)
        tokens, mask = batch if isinstance(batch, LMBatch) else (batch, None)
        ce = next_token_loss(module(tokens), tokens, mask)
        aux = aux_loss() if aux_loss is not None else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        (ce + aux).backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(clipped, cfg.grad_clip)
        opt.step()
        extra = dict(after_step(gen)) if after_step is not None else {}
        losses.append(ce.item())
        tokens_seen += tokens.numel()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {"step": step, "lm_loss": losses[-1], "aux_loss": aux.item(), "lr": lr,
                   "tokens_per_s": tokens_seen / max(time.perf_counter() - t0, 1e-9), **extra}
            rows.append(row)
            if log is not None:
                log(row)
    module.eval()
    return LMTrainResult(rows, losses, tokens_seen, time.perf_counter() - t0)


@torch.no_grad()
def eval_loss(net: Any, windows: Int[Tensor, "w pos"], batch: int = 16) -> float:
    """Token-weighted mean next-token loss of ``net`` (a `Model` or a module) over ``windows``."""
    module = _module(net)
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    total, count = 0.0, 0
    try:
        for rows in window_batches(windows, batch):
            rows = rows.to(device)
            n = rows.numel() - rows.shape[0]
            total += next_token_loss(module(rows), rows).item() * n
            count += n
    finally:
        module.train(was_training)
    return total / count


def random_windows(stream: Int[Tensor, " n"], batch: int, n_ctx: int, bos: int,
                   gen: torch.Generator) -> Int[Tensor, "batch n_ctx"]:
    """``batch`` windows of ``n_ctx − 1`` stream tokens at uniform random starts, each behind BOS
    (as TransformerLens feeds a model)."""
    if len(stream) <= n_ctx:
        raise ValueError(f"token stream of {len(stream)} tokens is too short for windows of n_ctx={n_ctx}")
    starts = torch.randint(0, len(stream) - n_ctx, (batch,), generator=gen)
    rows = torch.stack([stream[s: s + n_ctx - 1] for s in starts.tolist()])
    return torch.cat([torch.full((batch, 1), bos, dtype=torch.long), rows], dim=1)


def consecutive_windows(stream: Int[Tensor, " n"], n_ctx: int, bos: int,
                        max_windows: int | None = None) -> Int[Tensor, "w n_ctx"]:
    """Consecutive non-overlapping windows from the start of the stream, each behind BOS."""
    n = (len(stream) - 1) // (n_ctx - 1)
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"token stream of {len(stream)} tokens is shorter than n_ctx {n_ctx}")
    rows = stream[: n * (n_ctx - 1)].view(n, n_ctx - 1)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)


__all__ = ["LMBatch", "LMTrainConfig", "LMTrainResult", "consecutive_windows", "decay_groups",
           "eval_loss", "lr_factor", "next_token_loss", "random_windows", "train_lm"]
