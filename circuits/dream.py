"""Fluent dreaming: Evolutionary Prompt Optimization (EPO) of prompts that drive a target.

Thompson, Straznickas & Sklar 2024, "Fluent dreaming for language models" (arXiv:2402.01702).
For a prompt ``t = (t_1 ... t_n)`` and a target ``f`` (`mechscope.circuits.dream_targets.Target`)
EPO trades activation against fluency, the mean cross-entropy of the prompt under the model,

    CE(t) = -(1/n) sum_j log p(t_j | t_<j),        member i maximises  f(t) - λ_i CE(t),

with one fluency weight ``λ_i`` per member of a population (geometric between ``lambda_min``
and ``lambda_max``, or given). Each step:

1. *Gradients* (Greedy Coordinate Gradient, Zou et al. 2023): the embedding is replaced by
   ``e = onehot(t) W_E`` through a hook on ``hook_embed``; ``∂(f - λ_i CE)/∂onehot`` ranks, per
   position, the tokens whose substitution increases member ``i``'s objective to first order;
   the ``topk`` best allowed tokens per position are the candidates.
2. *Children*: each member spawns ``children`` copies with one substitution (a random position,
   a random candidate; with probability ``explore`` a uniformly random allowed token instead,
   which keeps the search moving where a feature is inactive and its gradient is zero). With a
   length range, a child may instead insert or delete a token.
3. *Selection*: slot ``i`` keeps the best of parents and children under its own ``λ_i``, among
   the prompts no earlier slot kept (slots with equal weights then hold a beam of distinct
   prompts rather than copies of one). The Pareto frontier of (activation, cross-entropy) of
   everything evaluated (the non-dominated set) is kept as the run goes and returned; the best
   prompt for each ``λ_i`` is read from it at the end.
4. *Restarts*: every ``restart_every`` steps all slots restart from the single member that is
   best for the ``λ`` of one randomly chosen slot (the paper's restarts), then diverge again.

*Surrogate* (``surrogate``, on by default): a feature of a top-k or JumpReLU dictionary that
fires on none of the prompts has zero gradient and ties everywhere, so steps 1 and 3 are blind.
For such targets the gradients and the selection read the feature's firing margin (margin of its
pre-activation to the k-th largest, or to its threshold) while it is off, and the activation once
it fires (`mechscope.circuits.dream_score`); the frontier and every reported number are the real
activation.

Memory is bounded by ``batch_size`` prompts per forward pass (`mechscope.circuits.dream_score`).
`text_reference` reads the same target and cross-entropy on real text, for comparison. All randomness comes from one local
``torch.Generator`` seeded by ``seed``, so a run is reproducible and the global RNG untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from mechscope.circuits.dream_result import DreamMember, DreamResult, Frontier  # noqa: F401 - re-exported
from mechscope.circuits.dream_score import Batch, Scorer, allowed_mask
from mechscope.circuits.dream_targets import Target


@dataclass(frozen=True)
class DreamConfig:
    """Settings of one EPO run (validated on construction)."""

    length: int | tuple[int, int] = 8
    """prompt length in tokens, or an inclusive range (lo, hi)"""
    steps: int = 100
    """EPO iterations"""
    population: int = 8
    """members, each with its own fluency weight λ"""
    children: int = 16
    """children per member per step"""
    batch_size: int = 64
    """prompts per forward pass (bounds memory)"""
    topk: int = 64
    """gradient candidates per position"""
    lambdas: tuple[float, ...] | None = None
    """explicit λ per member (overrides lambda_min / lambda_max)"""
    lambda_min: float = 0.1
    """smallest λ of the geometric ladder"""
    lambda_max: float = 10.0
    """largest λ of the geometric ladder"""
    restart_every: int = 50
    """restart all slots from one member every this many steps (0: never)"""
    explore: float = 0.1
    """probability that a substitution is uniformly random instead of gradient-guided"""
    length_moves: float = 0.2
    """with a length range: probability that a child inserts or deletes a token"""
    seed: int = 0
    """seed of the local generator"""
    surrogate: bool = True
    """feature targets of top-k / JumpReLU / ReLU / gated dictionaries: while the feature is off,
    search on its firing margin (`mechscope.circuits.dream_score`); False: the activation only"""
    bos: bool | None = None
    """prepend the model's BOS token (None: when the model has one)"""
    progress: bool = True
    """show a tqdm progress bar"""

    def __post_init__(self) -> None:
        lo, hi = self.length_range
        if lo < 1 or hi < lo:
            raise ValueError(f"length must be >= 1 or a range (lo, hi) with 1 <= lo <= hi, got {self.length}")
        for name in ("steps", "population", "children", "batch_size", "topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.restart_every < 0:
            raise ValueError(f"restart_every must be >= 0 (0: never), got {self.restart_every}")
        for name in ("explore", "length_moves"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.lambdas is not None:
            if len(self.lambdas) != self.population:
                raise ValueError(f"lambdas has {len(self.lambdas)} values for a population of {self.population}")
            if any(not lam >= 0 for lam in self.lambdas):
                raise ValueError(f"lambdas must be >= 0, got {self.lambdas}")
        elif not 0 < self.lambda_min <= self.lambda_max:
            raise ValueError(f"need 0 < lambda_min <= lambda_max, got {self.lambda_min}, {self.lambda_max}")

    @property
    def length_range(self) -> tuple[int, int]:
        return (self.length, self.length) if isinstance(self.length, int) else tuple(self.length)

    def lambda_values(self) -> Tensor:
        if self.lambdas is not None:
            return torch.tensor(self.lambdas, dtype=torch.float64)
        lo, hi = torch.tensor([self.lambda_min, self.lambda_max], dtype=torch.float64).log()
        return torch.linspace(float(lo), float(hi), self.population, dtype=torch.float64).exp()


def dream(model: Any, target: Target, config: DreamConfig = DreamConfig(), allowed: Any = None,
          init: Any = None) -> DreamResult:
    """Run EPO (see module doc) and return the frontier and the best prompt for each λ.

    ``allowed``: a bool mask ``[d_vocab]`` or token ids (default: every non-special token);
    ``init``: starting prompts (token id sequences, cycled over the population; default random).
    """
    import time

    from tqdm.auto import tqdm

    cfg, t0 = config, time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    scorer = Scorer(model, target, cfg.bos, cfg.surrogate)
    mask = allowed_mask(model, allowed)
    _check_position(target, cfg.length_range)
    lambdas = cfg.lambda_values()
    pop = scorer.score(*_initial(cfg, mask, init, gen), cfg.batch_size)
    frontier = Frontier()
    frontier.add(pop.ids, pop.lengths, pop.act, pop.ce, pop.per_token)
    bar = tqdm(range(cfg.steps), desc=f"dream {target.label}", disable=not cfg.progress, leave=False)
    for step in bar:
        cands = scorer.candidates(pop, lambdas, mask, cfg.topk, cfg.batch_size)
        kids = scorer.score(*_mutate(pop, cands, cfg, mask, gen), cfg.batch_size)
        frontier.add(kids.ids, kids.lengths, kids.act, kids.ce, kids.per_token)
        pool = Batch.cat(pop, kids)
        keep = _select(pool, lambdas)
        if cfg.restart_every and (step + 1) % cfg.restart_every == 0 and step + 1 < cfg.steps:
            slot = int(torch.randint(cfg.population, (1,), generator=gen))
            keep = keep[slot].expand(cfg.population)
        pop = pool.take(keep)
        bar.set_postfix(best=f"{frontier.best_activation():.3g}", search=f"{float(pop.search.max()):.3g}")
    config_json = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    config_json["surrogate_used"] = scorer.surrogate
    return frontier.result(model, target.describe(), config_json, lambdas, time.perf_counter() - t0)


def dream_features(model: Any, dictionary: Any, site: Any, features: Iterable[int],
                   config: DreamConfig = DreamConfig(), allowed: Any = None) -> dict[int, DreamResult]:
    """`dream` each feature of ``dictionary`` at ``site`` (max over positions) with one config:
    the time per feature is bounded by ``config`` (steps x population x children prompts), the
    total by the number of features. One progress bar over the features."""
    from tqdm.auto import tqdm

    features = list(features)
    out: dict[int, DreamResult] = {}
    bar = tqdm(features, desc="dreaming features", disable=not config.progress)
    for i in bar:
        out[i] = dream(model, Target.feature(site, dictionary, i), config, allowed)
        bar.set_postfix(feature=i, best=f"{out[i].best().activation:.3g}")
    return out


def _select(pool: Batch, lambdas: Tensor) -> Tensor:
    """Slot ``i`` takes the best prompt under ``λ_i`` among those no earlier slot took, so slots
    with equal or close weights hold different prompts instead of collapsing onto one (a beam);
    parents come first in the pool and win ties."""
    first: dict[tuple[int, ...], int] = {}
    for j, (row, n) in enumerate(zip(pool.ids.tolist(), pool.lengths.tolist())):
        first.setdefault(tuple(row[:n]), j)
    unique = torch.tensor(sorted(first.values()))
    scores = pool.search.double()[unique][None] - lambdas[:, None] * pool.ce.double()[unique][None]
    keep, taken = [], torch.zeros(len(unique), dtype=torch.bool)
    for i in range(len(lambdas)):
        row = scores[i].masked_fill(taken, float("-inf")) if not taken.all() else scores[i]
        j = int(row.argmax())
        taken[j] = True
        keep.append(int(unique[j]))
    return torch.tensor(keep)


def _check_position(target: Target, length_range: tuple[int, int]) -> None:
    p, lo = target.position, length_range[0]
    if p is not None and not -lo <= p < lo:
        raise ValueError(f"target position {p} does not exist in every prompt: with prompts of "
                         f"{lo} tokens or more, valid positions are {-lo}..{lo - 1} (or None: max)")


def _initial(cfg: DreamConfig, mask: Tensor, init: Any, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    lo, hi = cfg.length_range
    P, allowed_ids = cfg.population, mask.nonzero()[:, 0]
    ids = allowed_ids[torch.randint(len(allowed_ids), (P, hi), generator=gen)]
    lengths = torch.randint(lo, hi + 1, (P,), generator=gen)
    if init is not None:
        prompts = [list(map(int, p)) for p in init]
        for p in prompts:
            if not lo <= len(p) <= hi or not all(0 <= t < len(mask) and mask[t] for t in p):
                raise ValueError(f"initial prompt {p[:12]} must have {lo}..{hi} tokens, all allowed")
        for i in range(P):
            p = prompts[i % len(prompts)]
            ids[i, :len(p)] = torch.tensor(p)
            lengths[i] = len(p)
    return ids, lengths


def _mutate(pop: Batch, cands: Tensor, cfg: DreamConfig, mask: Tensor,
            gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``children`` copies of every member, each with one substitution (or insertion / deletion)."""
    allowed_ids = mask.nonzero()[:, 0]
    src = torch.arange(pop.ids.shape[0]).repeat_interleave(cfg.children)
    ids, lengths = pop.ids[src].clone(), pop.lengths[src].clone()
    n, rows = ids.shape[0], torch.arange(ids.shape[0])
    u = torch.rand(n, 4, generator=gen)
    pos = (u[:, 0] * lengths).long()
    guided = cands[src, pos, torch.randint(cands.shape[-1], (n,), generator=gen)]
    random = allowed_ids[torch.randint(len(allowed_ids), (n,), generator=gen)]
    ids[rows, pos] = torch.where(u[:, 1] < cfg.explore, random, guided)
    lo, hi = cfg.length_range
    if hi > lo:
        move = u[:, 2] < cfg.length_moves
        for i in rows[move & (u[:, 3] < 0.5) & (lengths < hi)].tolist():  # insert (also at the end)
            p = min(int(u[i, 0] * (lengths[i] + 1)), int(lengths[i]))
            ids[i, p + 1:] = pop.ids[src[i], p:hi - 1]
            ids[i, p] = random[i]
            lengths[i] += 1
        for i in rows[move & (u[:, 3] >= 0.5) & (lengths > lo)].tolist():  # delete pos
            p = int(pos[i])
            ids[i, p:hi - 1] = pop.ids[src[i], p + 1:hi]
            lengths[i] -= 1
    return ids, lengths


@dataclass(frozen=True)
class TextReference:
    """The target and the cross-entropy on windows of real text, to compare dreams against."""

    max_activation: float
    max_context: tuple[int, ...]  # the window's tokens up to the maximum (BOS excluded)
    cross_entropy: float  # mean over the windows of each window's mean next-token loss
    n_windows: int
    n_tokens: int


@torch.no_grad()
def text_reference(model: Any, target: Target, windows: Iterable[Tensor], batch_size: int = 32,
                   bos: bool | None = None) -> TextReference:
    """Max of the target over every position of ``windows`` (token id tensors, a leading BOS is
    dropped: the scorer adds it) and their mean cross-entropy, scored exactly like dreams."""
    scorer = Scorer(model, target.at(None), bos)
    best, best_ctx, ce_sum, n_win, n_tok = float("-inf"), (), 0.0, 0, 0
    rows: list[Tensor] = []

    def flush() -> None:
        nonlocal best, best_ctx, ce_sum, n_win, n_tok
        ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        lengths = torch.tensor([len(r) for r in rows])
        _, ce, per, _ = scorer.forward(ids, lengths)
        per = per.nan_to_num(float("-inf")).cpu()
        flat = int(per.argmax())
        i, j = divmod(flat, per.shape[1])
        if float(per[i, j]) > best:
            best, best_ctx = float(per[i, j]), tuple(rows[i][:j + 1].tolist())
        ce_sum, n_win, n_tok = ce_sum + float(ce.sum()), n_win + len(rows), n_tok + int(lengths.sum())
        rows.clear()

    for w in windows:
        w = torch.as_tensor(w).reshape(-1)
        if scorer.bos is not None and len(w) and int(w[0]) == scorer.bos:
            w = w[1:]
        if len(w) >= 2:
            rows.append(w)
        if len(rows) == batch_size:
            flush()
    if rows:
        flush()
    if n_win == 0:
        raise ValueError("text_reference got no window of at least 2 tokens")
    return TextReference(best, best_ctx, ce_sum / n_win, n_win, n_tok)
