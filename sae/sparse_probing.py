"""Sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack"; SAEBench's
``sparse_probing``): how well k latents of a dictionary predict a label, next to a dense probe on
the model's own activations.

Examples are short texts (token spans) with a class label; each example is the mean over its
tokens of the site's activations (``x̄``) and of the dictionary's codes (``f̄``, SAEBench's
"meaned" SAE activations). Every class c is a balanced binary task, c against the other
classes (negatives subsampled to as many as the positives, in train and in test). Per task:

- ``llm_test_accuracy``: a logistic-regression probe on all of ``x̄``;
- ``llm_top_{k}_test_accuracy``: on the k dimensions of ``x̄`` with the largest
  ``|mean(x̄ | c) − mean(x̄ | not c)|`` over the training examples;
- ``sae_test_accuracy``: on all latents of ``f̄``;
- ``sae_top_{k}_test_accuracy``: on the k latents chosen the same way from ``f̄``.

Probes are `mechscope.sae.probes.fit_logistic` (balanced, L2 with C = 1 as sklearn's default that
SAEBench uses); accuracy is measured on held-out examples. Reported numbers are means over the
tasks, with the per-task values in ``details``. SAEBench's datasets (bias-in-bios, Amazon
reviews, GitHub code, Europarl, AG News) need the hub; here a task is any labelled token spans,
e.g. `work_lines` (which Shakespeare play a line comes from).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechscope.sae.adapters import as_dictionary
from mechscope.sae.dictionary import DictionaryLike
from mechscope.sae.probes import accuracy, fit_logistic, mean_diff_top_k

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike


class ProbingSet(NamedTuple):
    """Token-level activations ``x [N, d_in]`` whose row i belongs to example ``example[i]``;
    ``label [n_examples]`` (class index), ``train [n_examples]``, ``classes`` (names)."""

    x: Float[Tensor, "N d_in"]
    example: Int[Tensor, "N"]
    label: Int[Tensor, "n"]
    train: Bool[Tensor, "n"]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class SparseProbingResult:
    ks: tuple[int, ...]
    llm_test_accuracy: float
    sae_test_accuracy: float
    llm_top_k: dict[int, float]
    sae_top_k: dict[int, float]
    per_class: tuple[dict[str, Any], ...]
    n_train: int
    n_test: int

    def saebench(self) -> dict[str, dict[str, float]]:
        """SAEBench's ``eval_result_metrics`` of ``sparse_probing`` (``llm`` and ``sae``)."""
        return {"llm": {"llm_test_accuracy": self.llm_test_accuracy,
                        **{f"llm_top_{k}_test_accuracy": v for k, v in self.llm_top_k.items()}},
                "sae": {"sae_test_accuracy": self.sae_test_accuracy,
                        **{f"sae_top_{k}_test_accuracy": v for k, v in self.sae_top_k.items()},
                        "num_tasks": float(len(self.per_class)), "num_train_examples": float(self.n_train),
                        "num_test_examples": float(self.n_test)}}


def mean_pool(rows: Float[Tensor, "N d"], example: Int[Tensor, "N"], n: int) -> Float[Tensor, "n d"]:
    """Mean of the rows of each example."""
    total = torch.zeros(n, rows.shape[1], dtype=torch.float64).index_add_(0, example, rows.double())
    count = torch.bincount(example, minlength=n).clamp_min(1)
    return (total / count[:, None]).float()


@torch.no_grad()
def pooled_codes(dictionary: Any, x: Tensor, example: Tensor, n: int, chunk: int = 4096) -> Tensor:
    """Mean over each example's rows of the dictionary's codes ``[n, d_dict]`` (memory: one chunk
    of rows as a sparse code, plus the pooled matrix)."""
    out = torch.zeros(n, dictionary.d_dict, dtype=torch.float64)
    for s in range(0, x.shape[0], chunk):
        code = dictionary.encode(x[s: s + chunk])
        ex = example[s: s + chunk].to(code.indices.device)[:, None].expand_as(code.indices)
        out.index_put_((ex.reshape(-1).cpu(), code.indices.reshape(-1).cpu()),
                       code.values.reshape(-1).double().cpu(), accumulate=True)
    count = torch.bincount(example, minlength=n).clamp_min(1)
    return (out / count[:, None]).float()


def _balanced(label: Tensor, c: int, idx: Tensor, g: torch.Generator) -> Tensor:
    """Indices of ``idx``: every example of class c and as many others, drawn at random."""
    pos, neg = idx[label[idx] == c], idx[label[idx] != c]
    neg = neg[torch.randperm(len(neg), generator=g)[: len(pos)]]
    return torch.cat([pos, neg])


def _task_accuracy(feats: Tensor, y_train: Tensor, y_test: Tensor, tr: Tensor, te: Tensor,
                   ks: Sequence[int]) -> tuple[float, dict[int, float]]:
    full = fit_logistic(feats[tr], y_train[:, None])
    dense = float(accuracy(full.scores(feats[te]), y_test[:, None])[0])
    top = {}
    for k in ks:
        idx = mean_diff_top_k(feats[tr], y_train[:, None], min(k, feats.shape[1]))
        probe = fit_logistic(feats[tr], y_train[:, None], features=idx)
        top[k] = float(accuracy(probe.scores(feats[te]), y_test[:, None])[0])
    return dense, top


@torch.no_grad()
def sparse_probing(dictionary: DictionaryLike, data: ProbingSet, ks: Sequence[int] = (1, 2, 5),
                   seed: int = 0) -> SparseProbingResult:
    """k-sparse probes on the dictionary's mean-pooled codes and probes on the mean-pooled
    activations, one balanced binary task per class (see the module docstring)."""
    d = as_dictionary(dictionary)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {list(ks)}")
    n = data.label.shape[0]
    x_bar = mean_pool(data.x, data.example, n)
    f_bar = pooled_codes(d, data.x, data.example, n)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = data.train.nonzero().flatten(), (~data.train).nonzero().flatten()
    rows = []
    for c, name in enumerate(data.classes):
        tr, te = _balanced(data.label, c, train_idx, g), _balanced(data.label, c, test_idx, g)
        if len(tr) < 4 or len(te) < 2:
            raise ValueError(f"class {name!r} has too few examples ({len(tr)} train / {len(te)} test, "
                             f"balanced) for a probe")
        y_tr, y_te = data.label[tr] == c, data.label[te] == c
        # probe inputs indexed by position in tr / te
        llm, llm_top = _task_accuracy(x_bar, y_tr, y_te, tr, te, ks)
        sae, sae_top = _task_accuracy(f_bar, y_tr, y_te, tr, te, ks)
        rows.append({"class": name, "llm_test_accuracy": llm, "sae_test_accuracy": sae,
                     **{f"llm_top_{k}_test_accuracy": v for k, v in llm_top.items()},
                     **{f"sae_top_{k}_test_accuracy": v for k, v in sae_top.items()},
                     "num_train": len(tr), "num_test": len(te)})

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    ks = tuple(ks)
    return SparseProbingResult(ks, mean("llm_test_accuracy"), mean("sae_test_accuracy"),
                               {k: mean(f"llm_top_{k}_test_accuracy") for k in ks},
                               {k: mean(f"sae_top_{k}_test_accuracy") for k in ks}, tuple(rows),
                               int(data.train.sum()), int((~data.train).sum()))


# -- data: which play a line comes from ------------------------------------------------------------
def work_lines(texts: Sequence[str], names: Sequence[str], per_class: int = 300, min_chars: int = 24,
               seed: int = 0) -> tuple[list[str], list[int]]:
    """Up to ``per_class`` lines of each text (a play), drawn at random, with the text's index.

    Speaker headings (``"FIRST WITCH."``) and stage directions in capitals are dropped, and lines
    shorter than ``min_chars``: they name the play's characters or say too little."""
    if len(texts) != len(names) or len(texts) < 2:
        raise ValueError(f"work_lines needs >= 2 texts with one name each, got {len(texts)} texts, {len(names)} names")
    g = torch.Generator().manual_seed(seed)
    lines, labels = [], []
    for c, text in enumerate(texts):
        cand = [s.strip() for s in text.split("\n")]
        cand = [s for s in cand if len(s) >= min_chars and not s.isupper()]
        if not cand:
            raise ValueError(f"text {names[c]!r} has no line of >= {min_chars} characters")
        pick = torch.randperm(len(cand), generator=g)[:per_class].tolist()
        lines += [cand[i] for i in pick]
        labels += [c] * len(pick)
    return lines, labels


@torch.no_grad()
def probing_set(model: "ModelLike", site: Any, lines: Sequence[str], labels: Sequence[int],
                classes: Sequence[str], test_fraction: float = 0.2, batch_size: int = 32,
                max_tokens: int = 64, seed: int = 0) -> ProbingSet:
    """Activations at ``site`` of each line (BOS + its tokens, at most ``max_tokens``), rows for
    the line's own tokens (BOS excluded), split into train / test lines at random."""
    from mechscope.interp.capture import capture
    from mechscope.interp.models import Model

    model = Model.wrap(model)
    site = model.site(site)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bos = model.require_bos_id("probing on lines of text")
    if model.attention_direction != "causal":
        batch_size = 1  # padding would be seen by bidirectional attention
    toks = [model.tokenizer.encode(s)[: max_tokens - 1] for s in lines]
    xs, ex = [], []
    for s in range(0, len(toks), batch_size):
        chunk = toks[s: s + batch_size]
        width = 1 + max(len(t) for t in chunk)
        # right padding: a causal model's activations at a line's tokens never see the padding
        batch = torch.full((len(chunk), width), bos, dtype=torch.long)
        for i, t in enumerate(chunk):
            batch[i, 1: 1 + len(t)] = torch.tensor(t, dtype=torch.long)
        act = capture(model, batch, [site])[site].float().cpu()
        for i, t in enumerate(chunk):
            xs.append(act[i, 1: 1 + len(t)].reshape(len(t), -1))
            ex.append(torch.full((len(t),), s + i, dtype=torch.long))
    n = len(lines)
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(n, dtype=torch.bool)
    test[torch.randperm(n, generator=g)[: max(1, round(test_fraction * n))]] = True
    return ProbingSet(torch.cat(xs), torch.cat(ex), torch.tensor(list(labels)), ~test, tuple(classes))
