"""Training a language model, with or without codebook bottlenecks, on any token sampler.

Objective: the mean next-token cross-entropy ``L_LM = −1/N Σ_t log p(x_{t+1} | x_{≤t})`` (nats),
plus, for a `CodebookModel`, its auxiliary codebook and commitment terms (see
`mechscope.sae.codebook_features.model`); the whole network is fine-tuned through the straight-through
bottlenecks, as in Tamkin et al. 2023 ("Codebook Features"), section 3. AdamW (Loshchilov &
Hutter 2019) with linear warm-up and cosine decay to ``min_lr_ratio · lr``; dead codes are
replaced after every step.

`loss_increase` is the paper's cost measure: held-out ``L_LM`` of the model with codebooks
minus that of the model before codebooks were added.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn

from mechscope.interp.models import Model

Sampler = Callable[[torch.Generator], Int[Tensor, "batch pos"]]


@dataclass(frozen=True)
class LMTrainConfig:
    """Optimisation of a model (pre-training) or of a codebook model (fine-tuning)."""

    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LMTrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training field(s) {unknown}; valid: {', '.join(sorted(names))}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) if types[k] == "float" and isinstance(v, int) else v for k, v in data.items()})


def lm_loss(logits: Tensor, tokens: Int[Tensor, "b pos"]) -> Tensor:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


def _lr(step: int, cfg: LMTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    u = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * u)))


def train_lm(net: "nn.Module | Model", sample: Sampler, cfg: LMTrainConfig,
             log: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``net`` (a `CodebookModel`, a `Model`, or any module mapping tokens to logits, e.g.
    a ``HookedTransformer``) on batches from ``sample``; returns the logged metrics."""
    from mechscope.sae.codebook_features.model import CodebookModel

    net = _module(net)
    is_cb = isinstance(net, CodebookModel)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows: list[dict] = []
    net.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        tokens = sample(gen)
        ce = lm_loss(net(tokens), tokens)
        aux = net.aux_loss() if is_cb else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        (ce + aux).backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        replaced = net.after_step(gen) if is_cb else 0
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {"step": step, "lm_loss": ce.item(), "aux_loss": aux.item(), "replaced_codes": replaced}
            rows.append(row)
            if log is not None:
                log(row)
    net.eval()
    return rows


@torch.no_grad()
def eval_loss(net: "nn.Module | Model", windows: Int[Tensor, "w pos"], batch: int = 64) -> float:
    """Token-weighted mean next-token loss of ``net`` (a module or a `Model`) over ``windows``."""
    net = _module(net)
    was = net.training
    net.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        rows = windows[i: i + batch]
        total += float(lm_loss(net(rows), rows)) * len(rows)
    net.train(was)
    return total / len(windows)


def _module(net: "nn.Module | Model") -> nn.Module:
    """The module to train or evaluate: ``net`` itself, or a `Model`'s network."""
    return net if isinstance(net, nn.Module) else Model.wrap(net).module


class LossReport(NamedTuple):
    """Held-out LM loss (nats/token): ``base`` model before codebooks, the fine-tuned model with
    its codebooks, the same weights with codebooks bypassed, and ``increase = codebook − base``."""

    base: float
    codebook: float
    bypassed: float
    increase: float


def loss_increase(base: "nn.Module | Model", cbm: nn.Module, windows: Int[Tensor, "w pos"]) -> LossReport:
    b = eval_loss(base, windows)
    c = eval_loss(cbm, windows)
    with cbm.disabled():
        by = eval_loss(cbm, windows)
    return LossReport(b, c, by, c - b)
