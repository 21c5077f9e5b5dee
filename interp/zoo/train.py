"""Training loop, token streams and held-out evaluation shared by the zoo recipes.

Objective: mean next-token cross-entropy ``L = -1/N sum_t log p(x_{t+1} | x_{<=t})`` (nats),
optionally restricted to a mask of predictable targets. Optimiser: AdamW (Kingma & Ba 2015;
Loshchilov & Hutter 2019) with the schedule ``lr(s) = lr * s / warmup`` for ``s < warmup`` and
``lr * (r + (1 - r) * (1 + cos(pi * u)) / 2)`` after, ``u = (s - warmup) / (steps - warmup)``,
``r = min_lr_ratio``. Every random draw comes from one ``torch.Generator`` seeded by the recipe,
so a build is deterministic on a given machine and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor


def lr_factor(step: int, warmup: int, steps: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    u = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(u, 1.0)))


def token_stream(works: list[str], tokenizer) -> Int[Tensor, " n"]:
    """Encode works separately and join them with EOS, the document boundary token."""
    ids: list[int] = []
    for text in works:
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def lm_batch(stream: Int[Tensor, " n"], batch: int, seq_len: int, bos: int,
             gen: torch.Generator) -> Int[Tensor, "batch seq"]:
    """Random windows of ``seq_len - 1`` stream tokens, each behind BOS (as TransformerLens feeds)."""
    starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=gen)
    rows = torch.stack([stream[s: s + seq_len - 1] for s in starts.tolist()])
    return torch.cat([torch.full((batch, 1), bos, dtype=torch.long), rows], dim=1)


def heldout_windows(stream: Int[Tensor, " n"], seq_len: int, bos: int,
                    max_windows: int | None = None) -> Int[Tensor, "w seq"]:
    """Consecutive non-overlapping windows from the start of the stream, each behind BOS."""
    n = (len(stream) - 1) // (seq_len - 1)
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"held-out stream of {len(stream)} tokens is shorter than seq_len {seq_len}")
    rows = stream[: n * (seq_len - 1)].view(n, seq_len - 1)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)


def next_token_loss(logits: Tensor, tokens: Int[Tensor, "b s"],
                    mask: Bool[Tensor, "b s"] | None = None) -> Tensor:
    """Mean CE of predicting ``tokens[:, 1:]``; ``mask`` marks the target positions that count."""
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(),
                         reduction="none").view(tokens.shape[0], -1)
    if mask is None:
        return ce.mean()
    m = mask[:, 1:].float()
    return (ce * m).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def evaluate(model, windows: Int[Tensor, "w seq"], batch: int = 16) -> float:
    """Token-weighted mean next-token loss of ``model`` over ``windows``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        rows = windows[i: i + batch].to(model.cfg.device)
        n = rows.numel() - rows.shape[0]
        total += next_token_loss(model(rows), rows).item() * n
        count += n
    model.train(was_training)
    return total / count


def fit(model, spec, batch_fn: Callable[[torch.Generator], tuple[Tensor, Tensor | None]],
        seed: int, log: Callable[[str], None] = print, log_every: int = 50) -> dict:
    """Train ``model`` for ``spec.steps``; returns the training statistics of the card."""
    gen = torch.Generator().manual_seed(seed + 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "W_pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "W_pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, spec.warmup, spec.steps, spec.min_lr_ratio))
    model.train()
    losses, tokens_seen, t0 = [], 0, time.perf_counter()
    for step in range(spec.steps):
        tokens, mask = batch_fn(gen)
        loss = next_token_loss(model(tokens), tokens, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        tokens_seen += tokens.numel()
        if log_every and (step % log_every == 0 or step == spec.steps - 1):
            rate = tokens_seen / (time.perf_counter() - t0)
            log(f"step {step:5d}/{spec.steps} loss {loss.item():.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {rate:.0f} tok/s")
    seconds = time.perf_counter() - t0
    model.eval()
    tail = losses[-max(1, min(50, len(losses) // 5)):]
    return {"steps": spec.steps, "tokens_seen": tokens_seen, "train_seconds": round(seconds, 1),
            "tokens_per_s": round(tokens_seen / seconds, 1),
            "train_loss_final": round(sum(tail) / len(tail), 4), "train_loss_first": round(losses[0], 4)}
