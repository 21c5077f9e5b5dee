"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption";
SAEBench's ``absorption_first_letter``, with Demian Till's absorption fraction).

Data: the tokenizer's word tokens (a space, then letters only: ``" short"``), each read once at a
site where it occurs in text, labelled by its first letter (case folded); words are split 80/20
into train / test by token, so every probe is judged on words it never saw.

1. **Ground-truth probe.** A logistic-regression probe per letter L on the activations the
   dictionary reconstructs (``x_out``: the input site for an SAE, the output site for a
   transcoder), trained on the train words; its unit weight vector is the letter's direction
   p_L. Letters whose probe reaches test F1 < ``min_probe_f1`` are not evaluated.
2. **Main latents (k-sparse probing).** On the dictionary's codes of the train words, latents
   ranked by the signed class-mean difference (fires more on L-words); for k = 1 … max_k a probe
   on the top k is fitted and its test F1 measured; k grows while F1 rises by more than
   ``f1_jump``. The kept latents are L's main latents; their number is SAEBench's
   ``num_split_features`` (1 = the letter is one latent; more = it split).
3. **Absorption**, on every test word of letter L that the probe detects (score > 0; the probe's
   true positives). With codes f, decoder directions d_i and ``c_i = cos(d_i, p_L)``, a latent's
   share of the probe projection is ``π_i = f_i c_i`` and the activation's is ``π = x_out·p_L``:

   - absorption fraction: with ``M = Σ_{main} π_i`` and ``A`` the sum of the (at most three)
     largest positive π_i of non-main latents with ``c_i ≥ 0.1``: 0 if ``M ≥ π`` or
     ``A < 0.4 π``; else 1 if ``M ≤ 0``; else ``min(A, π − M) / (min(A, π − M) + M)``;
   - full absorption: every main latent is off, the latent with the largest π_i has
     ``c_i ≥ 0.025`` and carries ``π_i ≥ 0.4 π`` (π ≥ 0).

   Per letter: ``mean_absorption_fraction`` = Σ fractions / true positives,
   ``full_absorption_rate`` = full absorptions / true positives; the report averages letters
   (SAEBench: ``mean_absorption_fraction_score``, ``mean_full_absorption_score``,
   ``mean_num_split_features`` and their standard deviations).

Departures from SAEBench's code, on purpose:

- Activations are read where each word occurs in text (its first occurrence in ``windows``), not in
  an in-context spelling prompt (``"{word} has the first letter:"``): the zoo's models cannot
  spell, but whether the first letter is linearly readable from a token's residual stream — all
  the probe needs — does not depend on a prompt after the word in a causal model, and the text
  is the distribution the dictionary was trained on.
- Main latents are ranked by the signed class-mean difference (SAEBench's sparse-probing
  selection) instead of an L1-regularised probe on all latents: no L1 strength to tune and the
  same ordering for a latent that fires on the letter's words.
- Probes are one-vs-rest balanced logistic regressions fitted by L-BFGS
  (`mechscope.sae.probes`), not Adam for 50 epochs.
- ``min_letters`` (SAEBench: 20 letters with a probe F1 > 0.6) is a parameter: a small model or
  vocabulary may have fewer letters with enough word tokens, and says so (`AbsorptionError`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechscope.sae.adapters import as_dictionary
from mechscope.sae.dictionary import DictionaryLike
from mechscope.sae.probes import LinearProbe, f1_score, fit_logistic, mean_diff_top_k

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

LETTERS = "abcdefghijklmnopqrstuvwxyz"
_EPS = 1e-8


class AbsorptionError(ValueError):
    """The data cannot support the evaluation (too few letters / words), with the counts."""


@dataclass(frozen=True)
class AbsorptionConfig:
    """Thresholds of the absorption evaluation (defaults: SAEBench's)."""

    max_k: int = 10  # largest k-sparse probe tried for the main latents
    f1_jump: float = 0.03  # a latent joins the main latents if it raises test F1 by more than this
    min_probe_f1: float = 0.6  # letters whose ground-truth probe has a lower test F1 are skipped
    min_letters: int = 5  # fewer evaluable letters than this is an AbsorptionError (SAEBench: 20)
    min_words: int = 10  # word tokens a letter needs to be probed at all
    full_absorption_cos: float = 0.025
    fraction_cos: float = 0.1
    projection_proportion: float = 0.4
    max_absorbers: int = 3
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_k", "min_letters", "min_words", "max_absorbers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"AbsorptionConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"AbsorptionConfig.test_fraction must be in (0, 1), got {self.test_fraction}")


class SpellingSet(NamedTuple):
    """Word-token activations: ``x_in`` (what the dictionary encodes), ``x_out`` (what it
    reconstructs and the probe reads; the same tensor for an SAE), first ``letter`` (0..25),
    ``token`` ids and the word strings, ``train`` / test split by word."""

    x_in: Float[Tensor, "n d_in"]
    x_out: Float[Tensor, "n d_out"]
    letter: Int[Tensor, "n"]
    token: Int[Tensor, "n"]
    train: Bool[Tensor, "n"]
    words: tuple[str, ...]


@dataclass(frozen=True)
class LetterAbsorption:
    """One letter's row (SAEBench's ``eval_result_details`` fields, plus the probe F1 and the
    main latents)."""

    first_letter: str
    mean_absorption_fraction: float
    full_absorption_rate: float
    num_full_absorption: int
    num_probe_true_positives: int
    num_split_features: int
    probe_f1: float
    main_latents: tuple[int, ...]


@dataclass(frozen=True)
class AbsorptionResult:
    letters: tuple[LetterAbsorption, ...]  # evaluated letters (probe F1 >= min_probe_f1)
    n_words: int
    probe_f1: dict[str, float]  # every probed letter's test F1

    def saebench(self) -> dict[str, dict[str, float]]:
        """SAEBench's ``eval_result_metrics`` of ``absorption_first_letter``."""
        frac = [r.mean_absorption_fraction for r in self.letters]
        full = [r.full_absorption_rate for r in self.letters]
        split = [float(r.num_split_features) for r in self.letters]

        def sd(v: list[float]) -> float:
            return statistics.stdev(v) if len(v) > 1 else float("nan")

        return {"mean": {"mean_absorption_fraction_score": statistics.mean(frac),
                         "mean_full_absorption_score": statistics.mean(full),
                         "mean_num_split_features": statistics.mean(split),
                         "std_dev_absorption_fraction_score": sd(frac),
                         "std_dev_full_absorption_score": sd(full),
                         "std_dev_num_split_features": sd(split),
                         "num_letters": float(len(self.letters)), "num_words": float(self.n_words)}}

    def details(self) -> list[dict[str, Any]]:
        return [{**asdict(r), "main_latents": list(r.main_latents)} for r in self.letters]


# -- data ------------------------------------------------------------------------------------------
def word_tokens(decode: Callable[[int], str], vocab_size: int) -> dict[int, tuple[str, int]]:
    """``{token id: (word, letter index)}`` for tokens that read as a space and ASCII letters."""
    out = {}
    for i in range(vocab_size):
        s = decode(i)
        if len(s) >= 2 and s[0] == " " and s[1:].isascii() and s[1:].isalpha():
            out[i] = (s, LETTERS.index(s[1].lower()))
    return out


@torch.no_grad()
def spelling_set(model: "ModelLike", site_in: Any, windows: Iterable[Tensor], site_out: Any = None,
                 batch_size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> SpellingSet:
    """Each word token of the model's tokenizer at its first occurrence in ``windows``
    (activations at ``site_in`` and ``site_out``), split into train / test words at random."""
    from mechscope.interp.capture import capture
    from mechscope.interp.models import Model
    from mechscope.interp.tokens import window_batches

    model = Model.wrap(model)
    if model.tokenizer is None:
        raise AbsorptionError(f"model {model.name!r} has no tokenizer: the first-letter task needs word tokens")
    site_in = model.site(site_in)
    site_out = site_in if site_out is None else model.site(site_out)
    vocab = word_tokens(lambda i: model.tokenizer.decode([i]), model.cfg.d_vocab)
    if not vocab:
        raise AbsorptionError(f"the tokenizer of model {model.name!r} has no word tokens (a space "
                              f"followed by letters, e.g. ' the'): the first-letter task needs them")
    is_word = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    is_word[list(vocab)] = True
    seen: dict[int, tuple[Tensor, Tensor]] = {}
    for tokens in window_batches(windows, batch_size):
        flat = tokens.reshape(-1)
        new = is_word[flat]
        if seen:
            new = new & ~torch.isin(flat, torch.tensor(list(seen), dtype=flat.dtype))
        if not new.any():
            continue
        acts = capture(model, tokens, sorted({site_in, site_out}))
        rows = {s: a.reshape(flat.shape[0], -1) for s, a in acts.items()}
        for pos in new.nonzero().flatten().tolist():
            t = int(flat[pos])
            if t not in seen:
                seen[t] = (rows[site_in][pos].float().cpu(), rows[site_out][pos].float().cpu())
        if len(seen) == len(vocab):
            break
    if not seen:
        raise AbsorptionError("no word token of the tokenizer occurs in the text windows")
    ids = sorted(seen)
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(ids), dtype=torch.bool)
    test[torch.randperm(len(ids), generator=g)[: max(1, round(test_fraction * len(ids)))]] = True
    x_in = torch.stack([seen[t][0] for t in ids])
    x_out = x_in if site_out == site_in else torch.stack([seen[t][1] for t in ids])
    return SpellingSet(x_in, x_out, torch.tensor([vocab[t][1] for t in ids]), torch.tensor(ids), ~test,
                       tuple(vocab[t][0] for t in ids))


# -- the evaluation --------------------------------------------------------------------------------
def _letters(data: SpellingSet, cfg: AbsorptionConfig) -> list[int]:
    counts = torch.bincount(data.letter, minlength=26)
    ok = [c for c in range(26) if counts[c] >= cfg.min_words
          and bool((data.train & (data.letter == c)).any()) and bool((~data.train & (data.letter == c)).any())]
    if len(ok) < cfg.min_letters:
        have = ", ".join(f"{LETTERS[c]}:{int(n)}" for c, n in enumerate(counts.tolist()) if n)
        raise AbsorptionError(
            f"only {len(ok)} letters have >= {cfg.min_words} word tokens (in both train and test words); "
            f"absorption needs >= {cfg.min_letters} (AbsorptionConfig.min_letters). Word tokens per first "
            f"letter: {have or 'none'}. A character-level or tiny tokenizer has too few word tokens "
            f"(a space followed by letters) for the first-letter task")
    return ok


def _main_latents(f: Tensor, y: Tensor, train: Tensor, cfg: AbsorptionConfig) -> list[list[int]]:
    """Per letter column, the main latents chosen by k-sparse probes (test-F1 jumps)."""
    k_max = min(cfg.max_k, f.shape[1])
    ranked = mean_diff_top_k(f[train], y[train], k_max, signed=True)
    f1s = []
    for k in range(1, k_max + 1):
        probe = fit_logistic(f[train], y[train], features=ranked[:, :k])
        f1s.append(f1_score(probe.scores(f[~train]), y[~train]))
    mains = []
    for c in range(y.shape[1]):
        best, chosen = -math.inf, []
        for k in range(k_max):
            if float(f1s[k][c]) > best + cfg.f1_jump:
                best, chosen = float(f1s[k][c]), ranked[c, : k + 1].tolist()
            else:
                break
        mains.append(chosen)
    return mains


def _letter_scores(f: Tensor, x_proj: Tensor, cos: Tensor, main: list[int],
                   cfg: AbsorptionConfig) -> tuple[Tensor, Tensor]:
    """Absorption fraction and full-absorption flag of each row (one letter's true positives)."""
    proj = f * cos  # [m, d_dict]: each latent's share of the probe projection
    is_main = torch.zeros(f.shape[1], dtype=torch.bool)
    is_main[main] = True
    main_proj = proj[:, is_main].sum(1)
    cand = torch.where(~is_main & (cos >= cfg.fraction_cos) & (proj > 0), proj, torch.zeros_like(proj))
    absorbed = cand.topk(min(cfg.max_absorbers, f.shape[1]), dim=1).values.sum(1)
    unaccounted = x_proj - main_proj
    partial = absorbed.minimum(unaccounted)
    frac = (partial / (partial + main_proj)).clamp(0, 1)
    frac = torch.where(main_proj <= 0, torch.ones_like(frac), frac)
    # (SAEBench divides by π: a row with π <= 0 never counts as absorbed)
    frac = torch.where((x_proj <= 0) | (main_proj >= x_proj) | (absorbed < cfg.projection_proportion * x_proj),
                       torch.zeros_like(frac), frac)
    top_proj, top = proj.max(1)
    full = ((f[:, is_main] < _EPS).all(1) & (cos[top] >= cfg.full_absorption_cos) & (x_proj >= 0)
            & (top_proj >= cfg.projection_proportion * x_proj))
    return frac, full


@torch.no_grad()
def absorption(dictionary: DictionaryLike, data: SpellingSet,
               cfg: AbsorptionConfig = AbsorptionConfig()) -> AbsorptionResult:
    """First-letter absorption of ``dictionary`` on ``data`` (see the module docstring)."""
    d = as_dictionary(dictionary)
    letters = _letters(data, cfg)
    keep = torch.isin(data.letter, torch.tensor(letters))
    x_in, x_out, train = data.x_in[keep], data.x_out[keep], data.train[keep]
    col = {c: j for j, c in enumerate(letters)}
    y = torch.nn.functional.one_hot(torch.tensor([col[int(c)] for c in data.letter[keep]]), len(letters)).bool()
    probe: LinearProbe = fit_logistic(x_out[train], y[train])
    test_scores = probe.scores(x_out[~train])
    probe_f1 = f1_score(test_scores, y[~train])
    f = torch.cat([d.encode(chunk).dense(d.d_dict).float().cpu() for chunk in x_in.split(4096)])
    mains = _main_latents(f, y, train, cfg)
    dirs = d.directions.detach().float().cpu()
    p = probe.directions
    cos = (dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ p.T  # [d_dict, letters]
    rows = []
    f_test, x_test, y_test = f[~train], x_out[~train], y[~train]
    for j, c in enumerate(letters):
        if float(probe_f1[j]) < cfg.min_probe_f1 or not mains[j]:
            continue
        tp = y_test[:, j] & (test_scores[:, j] > 0)
        n_tp = int(tp.sum())
        if n_tp == 0:
            continue
        frac, full = _letter_scores(f_test[tp], x_test[tp] @ p[j], cos[:, j], mains[j], cfg)
        rows.append(LetterAbsorption(LETTERS[c], float(frac.sum()) / n_tp, float(full.sum()) / n_tp,
                                     int(full.sum()), n_tp, len(mains[j]), float(probe_f1[j]), tuple(mains[j])))
    if len(rows) < cfg.min_letters:
        raise AbsorptionError(
            f"only {len(rows)} of {len(letters)} letters have a first-letter probe with test F1 >= "
            f"{cfg.min_probe_f1} (AbsorptionConfig.min_probe_f1); absorption needs >= {cfg.min_letters}. "
            f"Probe F1 per letter: " + ", ".join(f"{LETTERS[c]}:{float(v):.2f}" for c, v in zip(letters, probe_f1)))
    return AbsorptionResult(tuple(rows), int(keep.sum()),
                            {LETTERS[c]: float(v) for c, v in zip(letters, probe_f1)})
