"""A zoo recipe's training run: its `ZooSpec` as an `LMTrainConfig` for the one LM training loop
(`mechscope.interp.lm_train`), and the card's training statistics.

The recipe's choices: AdamW with ``betas = (0.9, 0.95)``, weight decay on weight matrices only
(`mechscope.interp.lm_train.decay_groups`), gradient norm clipped to 1, and the batch generator
seeded with ``seed + 1`` (``seed`` itself initialises the weights), so a build is deterministic
on a given machine and thread count.
"""

from __future__ import annotations

from collections.abc import Callable

from mechscope.interp.lm_train import LMTrainConfig, Sampler, decay_groups, train_lm


def lm_config(spec, seed: int, log_every: int = 50) -> LMTrainConfig:
    """The training config of a `ZooSpec` built with ``seed``."""
    return LMTrainConfig(steps=spec.steps, lr=spec.lr, warmup_steps=spec.warmup,
                         min_lr_ratio=spec.min_lr_ratio, weight_decay=spec.weight_decay,
                         betas=(0.9, 0.95), grad_clip=1.0, seed=seed + 1, log_every=log_every)


def fit(model, spec, sample: Sampler, seed: int, log: Callable[[str], None] = print,
        log_every: int = 50) -> dict:
    """Train ``model`` for ``spec.steps``; returns the training statistics of the card."""
    cfg = lm_config(spec, seed, log_every)

    def show(row: dict) -> None:
        log(f"step {row['step']:5d}/{spec.steps} loss {row['lm_loss']:.4f} "
            f"lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s")

    run = train_lm(model, sample, cfg, params=decay_groups(model, spec.weight_decay), log=show)
    losses = run.losses
    tail = losses[-max(1, min(50, len(losses) // 5)):]
    return {"steps": spec.steps, "tokens_seen": run.tokens_seen, "train_seconds": round(run.seconds, 1),
            "tokens_per_s": round(run.tokens_seen / run.seconds, 1),
            "train_loss_final": round(sum(tail) / len(tail), 4), "train_loss_first": round(losses[0], 4)}
