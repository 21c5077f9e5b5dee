"""The TokFSM experiment of Codebook Features: states found as single codes, and steered.

Tamkin et al. 2023 ("Codebook Features: Sparse and Discrete Interpretability for Neural
Networks", section 4) train a transformer on walks of a random FSM (`mechscope.interp.tokfsm`),
add codebooks, fine-tune, and ask (1) how well one code identifies one state and (2) whether
forcing a state's code makes the model continue as if it were in that state.

Measures (all on fresh walks):

* Next-state distribution. A prompt ends on the last digit of a state ``s``; for every state
  ``s'`` the model's probability of writing it next is ``p(s') = Π_i p(d_i(s') | prompt,
  d_{<i}(s'))`` (one batched forward over the prompt followed by each candidate's digits),
  renormalised over the ``S`` states. ``valid_mass = Σ_{s' ∈ succ(s)} p(s')`` is 1 for a perfect
  model and ``D / S`` (chance) for a uniform one; ``true_prob`` (mean ``p`` of the walked next
  state) is at most ``1 / D``.
* State identification: per state, the code with the best F1 as a detector of "the token is the
  last digit of state s" (`mechscope.sae.codebook_features.steer.detector_stats`): its precision and recall.
  Chance precision of a code that fires at random is the state's frequency, about ``1 / S``.
* Steering (the paper's intervention, released code ``tutorials/tokfsm.ipynb``): a target
  state ``t``'s codes are, per codebook, the code(s) selected most often at ``t``'s last digit
  (`state_codes`; the paper reads them off one run of ``t``). They are forced at *every*
  codebook at once on the prompt's last token, the prompt ending in another state ``s``. With
  codebooks on every head and every MLP (`~mechscope.sae.codebook_features.model.PAPER_SITES`)
  everything attention and MLPs write into the residual stream there is then ``t``'s; with
  codebooks on a few sites, the rest of the residual stream still carries ``s``.
  ``follow_rate`` is the fraction of greedily generated next states that are successors of
  ``t``; its chance level is ``D / S``, and ``follow_rate_unsteered`` (the same count without
  forcing) is the empirical one. The masses on ``succ(t)`` / ``succ(s)`` and the Jensen-Shannon
  divergence to ``t``'s true next-state distribution (uniform on ``succ(t)``) say how far the
  distribution moved; the paper's tutorial reports that divergence, normalised.

Reference levels (CPU, measured here). Tiny run of tests/sae/codebook_features/test_steer.py: 12 states, 2
out-edges, base 4; 2 layers, d_model 32; 200 pre-training + 60 fine-tuning steps of 32 walks;
32 codes, k = 1 at L0.mlp_out and L1.mlp_out: valid mass 0.95 (chance 0.17), best-code
precision 0.59 / recall 0.74 at L0.mlp_out (chance precision 0.08); forcing the state codes at
both sites moves the mass on the target's successors 0.20 → 0.38 and on the original's
0.93 → 0.58. The test asserts these with margin. The bigger run is examples/02_codebook_fsm.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechscope.sae.codebook_features.steer import detector_stats
from mechscope.interp.tokfsm import TokFSM

if TYPE_CHECKING:
    from mechscope.sae.codebook_features.model import CodebookModel
    from mechscope.interp.models import Model


def fsm_model(fsm: TokFSM, n_steps: int, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
              d_mlp: int = 256, seed: int = 0, device: "torch.device | str" = "cpu") -> "Model":
    """A small GPT-2-style TransformerLens model sized for walks of ``n_steps`` states (weights
    drawn on the CPU from ``seed``, then placed on ``device``)."""
    from mechscope.interp.models import Model

    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    cfg = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
               d_mlp=d_mlp, d_vocab=fsm.d_vocab, n_ctx=fsm.seq_len(n_steps), act_fn="gelu_new",
               normalization_type="LN", seed=seed)
    model = Model.from_config(cfg, name=f"tokfsm-{fsm.n_states}x{fsm.out_degree}", seed=seed)
    model.module.to(device)
    return model


def fsm_sampler(fsm: TokFSM, batch: int, n_steps: int, device: "torch.device | str" = "cpu"):
    """A sampler ``gen -> tokens [batch, 1 + n_steps * n_digits]`` of fresh walks (drawn on the
    CPU, so the same walks on every device, then moved to ``device``)."""
    return lambda gen: fsm.sample(batch, n_steps, gen).tokens.to(device)


def _device(net: Any) -> torch.device:
    dev = getattr(net, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


@torch.no_grad()
def next_state_probs(net: Callable[[Tensor], Tensor], fsm: TokFSM, prompts: Int[Tensor, "n pos"],
                     chunk: int = 4096) -> Float[Tensor, "n S"]:
    """``p(s' | prompt)`` for every state, from the digits' chained probabilities (on the CPU)."""
    n, L, S, nd = len(prompts), prompts.shape[1], fsm.n_states, fsm.n_digits
    cand = fsm.digits(torch.arange(S))
    seqs = torch.cat([prompts.cpu().repeat_interleave(S, 0), cand.repeat(n, 1)], 1).to(_device(net))
    logps = []
    for i in range(0, len(seqs), chunk):
        rows = seqs[i: i + chunk]
        lp = net(rows)[:, L - 1: L - 1 + nd].log_softmax(-1)
        logps.append(lp.gather(-1, rows[:, L:, None]).squeeze(-1).sum(-1))
    return torch.cat(logps).view(n, S).softmax(-1).cpu()


class TransitionReport(NamedTuple):
    valid_mass: float
    true_prob: float
    chance_valid_mass: float
    ideal_true_prob: float


def fsm_prompts(fsm: TokFSM, n: int, n_steps: int, seed: int):
    """Walks of ``n_steps`` states cut before the last one: prompts, their last states and the
    walked next states."""
    s = fsm.sample(n, n_steps, torch.Generator().manual_seed(seed))
    return s.tokens[:, : fsm.seq_len(n_steps - 1)], s.states[:, -2], s.states[:, -1]


@torch.no_grad()
def transition_report(net: Callable[[Tensor], Tensor], fsm: TokFSM, n_steps: int, n_prompts: int = 256,
                      seed: int = 1) -> TransitionReport:
    """How well ``net`` follows the machine's transitions (see module doc)."""
    prompts, last, nxt = fsm_prompts(fsm, n_prompts, n_steps, seed)
    p = next_state_probs(net, fsm, prompts)
    valid = fsm.adjacency()[last]
    return TransitionReport(float((p * valid).sum(1).mean()), float(p.gather(1, nxt[:, None]).mean()),
                            fsm.out_degree / fsm.n_states, 1 / fsm.out_degree)


class StateCodes(NamedTuple):
    """Per state: the best code at one site (one per head group) and its precision/recall."""

    site: str
    codes: Int[Tensor, "S G"]
    precision: Float[Tensor, "S G"]
    recall: Float[Tensor, "S G"]
    chance_precision: float

    def mean_precision(self) -> float:
        return float(self.precision.max(1).values.mean())

    def mean_recall(self) -> float:
        return float(self.recall.gather(1, self.precision.argmax(1, keepdim=True)).mean())


@torch.no_grad()
def state_identification(cbm: "CodebookModel", fsm: TokFSM, n_seqs: int, n_steps: int,
                         seed: int = 2) -> dict[str, StateCodes]:
    """Per codebook site: each state's best single code (max F1) at the states' last digits."""
    s = fsm.sample(n_seqs, n_steps, torch.Generator().manual_seed(seed))
    at = s.digit_at == fsm.n_digits - 1
    labels = s.state_at[at]
    freq = torch.bincount(labels, minlength=fsm.n_states).float() / len(labels)
    out = {}
    for name, codes in cbm.codes(s.tokens).items():
        best, prec, rec = [], [], []
        for g in range(codes.shape[2]):
            st = detector_stats(codes[:, :, g][at], labels, cbm.spec.n_codes, fsm.n_states)
            c = st.f1().argmax(0)
            idx = torch.arange(fsm.n_states)
            best.append(c)
            prec.append(st.precision[c, idx])
            rec.append(st.recall[c, idx])
        out[name] = StateCodes(name, torch.stack(best, 1), torch.stack(prec, 1), torch.stack(rec, 1),
                               float(freq.mean()))
    return out


def best_site(ids: dict[str, StateCodes]) -> StateCodes:
    """The site whose state codes have the highest mean F1."""
    def f1(sc: StateCodes) -> float:
        p, r = sc.precision, sc.recall
        return float((2 * p * r / (p + r).clamp_min(1e-12)).max(1).values.mean())

    return max(ids.values(), key=f1)


@torch.no_grad()
def state_codes(cbm: "CodebookModel", fsm: TokFSM, n_seqs: int, n_steps: int,
                seed: int = 2, digit: int = -1) -> dict[str, Int[Tensor, "S G k"]]:
    """Each state's codes at every codebook: per site and head group, the ``k`` codes selected
    most often at ``digit`` (default the last) of that state on ``n_seqs`` fresh walks (the
    paper reads them off one run of the state; the mode over many runs is the same code when
    the codebook carries the state, and the best guess when it carries it imperfectly)."""
    if not -fsm.n_digits <= digit < fsm.n_digits:
        raise ValueError(f"digit {digit} out of range for {fsm.n_digits}-digit states")
    s = fsm.sample(n_seqs, n_steps, torch.Generator().manual_seed(seed))
    at = s.digit_at == digit % fsm.n_digits
    labels = s.state_at[at]
    unseen = sorted(set(range(fsm.n_states)) - set(labels.tolist()))
    if unseen:
        raise ValueError(f"states {unseen} never occur in {n_seqs} walks of {n_steps} states; "
                         "use more walks to find their codes")
    k, C = cbm.spec.k, cbm.spec.n_codes
    out = {}
    for name, codes in cbm.codes(s.tokens).items():
        sel = codes[at].cpu()  # [n, G, k]
        counts = torch.zeros(fsm.n_states, sel.shape[1], C)
        for g in range(sel.shape[1]):
            rows = labels.repeat_interleave(k)
            counts[:, g].index_put_((rows, sel[:, g].reshape(-1)), torch.ones(len(rows)), accumulate=True)
        out[name] = counts.topk(k, dim=-1).indices
    return out


def codes_of(codes: "StateCodes | Sequence[StateCodes] | Mapping[str, Tensor]") -> dict[str, Tensor]:
    """``{site: [S, G, f]}`` from `state_codes`' mapping or from `StateCodes` (best detector codes)."""
    if isinstance(codes, StateCodes):
        codes = [codes]
    if isinstance(codes, Mapping):
        return {str(k): torch.as_tensor(v).reshape(*torch.as_tensor(v).shape[:2], -1) for k, v in codes.items()}
    return {sc.site: sc.codes[:, :, None] for sc in codes}


def _jsd(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits (0 .. 1) between rows of ``p`` and ``q``."""
    m = (p + q) / 2

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(a > 0, a * (a.clamp_min(1e-30).log2() - b.clamp_min(1e-30).log2()), 0.0).sum(-1)

    return (kl(p, m) + kl(q, m)) / 2


@torch.no_grad()
def generated_states(cbm: "CodebookModel", fsm: TokFSM, prompts: Int[Tensor, "n pos"],
                     force: Mapping[str, Any] | None = None,
                     positions: Sequence[int] = (-1,)) -> Int[Tensor, " n"]:
    """The next state the model writes greedily (``n_digits`` tokens) after each prompt, with
    ``force`` codes on at the prompt ``positions``; a digit string that names no state gives a
    value ``>= n_states``."""
    from mechscope.sae.codebook_features.steer import generate

    out = generate(cbm, prompts, fsm.n_digits, dict(force) if force else None, positions=positions)
    return fsm.undigits(out[:, -fsm.n_digits:].cpu())


class SteerReport(NamedTuple):
    """Steering by forcing a target state's codes (see module doc). Masses are mean next-state
    probability on the target's successors and on the original state's, forced and not;
    ``follow_rate``: fraction of greedily generated next states that are successors of the target
    (``follow_rate_unsteered``: the same count without forcing, the empirical chance level);
    ``chance = D / S``; ``js_target`` / ``js_target_unsteered``: mean Jensen-Shannon divergence
    (bits) between the model's next-state distribution and the target's true one (uniform on its
    successors), the measure of the paper's released TokFSM tutorial; ``n_prompts`` steered
    prompts; ``n_codebooks`` codebooks forced at once."""

    target_mass: float
    target_mass_unsteered: float
    original_mass: float
    original_mass_unsteered: float
    follow_rate: float
    chance: float
    follow_rate_unsteered: float
    js_target: float
    js_target_unsteered: float
    n_prompts: int
    n_codebooks: int


@torch.no_grad()
def steering_report(cbm: "CodebookModel", fsm: TokFSM,
                    codes: "StateCodes | Sequence[StateCodes] | Mapping[str, Tensor]", n_steps: int,
                    prompts_per_state: int = 8, positions: Sequence[int] = (-1,),
                    seed: int = 3) -> SteerReport:
    """Force each target state's codes, at every codebook in ``codes`` at once (`state_codes`
    for all of them; `StateCodes` for one site's detector codes), at the prompt ``positions`` of
    prompts that end in other states (see module doc). ``codes`` may instead map prompt
    positions to tables, e.g. ``{-2: state_codes(.., digit=0), -1: state_codes(.., digit=1)}``
    to force the codes of each of the target's digits on the prompt's last state."""
    if isinstance(codes, Mapping) and codes and all(isinstance(k, int) for k in codes):
        tables = {int(p): codes_of(c) for p, c in codes.items()}  # {prompt position: table}
    else:
        tables = {int(p): codes_of(codes) for p in positions}
    adj = fsm.adjacency()
    padded = torch.cat([adj, torch.zeros(fsm.n_states, 1, dtype=torch.bool)], 1)  # column S: no state
    prompts, last, _ = fsm_prompts(fsm, prompts_per_state * fsm.n_states, n_steps, seed)
    g = torch.Generator().manual_seed(seed)
    targets = (last + torch.randint(1, fsm.n_states, last.shape, generator=g)) % fsm.n_states
    base = next_state_probs(cbm, fsm, prompts)
    free = generated_states(cbm, fsm, prompts).clamp_max(fsm.n_states)
    steered = torch.empty_like(base)
    nxt = torch.empty_like(free)
    for t in targets.unique().tolist():
        rows = targets == t
        with ExitStack() as stack:
            for p, table in tables.items():  # prompt positions, not the candidates'
                force = {site: [[int(c) for c in grp] for grp in tab[t]] for site, tab in table.items()}
                stack.enter_context(cbm.forcing(force, positions=[p % prompts.shape[1]]))
            steered[rows] = next_state_probs(cbm, fsm, prompts[rows])
            nxt[rows] = generated_states(cbm, fsm, prompts[rows]).clamp_max(fsm.n_states)
    tgt, orig = adj[targets].float(), adj[last].float()
    truth = tgt / tgt.sum(1, keepdim=True)
    return SteerReport(
        float((steered * tgt).sum(1).mean()), float((base * tgt).sum(1).mean()),
        float((steered * orig).sum(1).mean()), float((base * orig).sum(1).mean()),
        float(padded[targets, nxt].float().mean()), fsm.out_degree / fsm.n_states,
        float(padded[targets, free].float().mean()),
        float(_jsd(steered, truth).mean()), float(_jsd(base, truth).mean()),
        len(targets), sum(t.shape[1] for t in next(iter(tables.values())).values()),
    )
