"""Steering by codes: find the codes that detect a token or context, then force them on.

Codes as detectors (Tamkin et al. 2023, "Codebook Features", section 5). Over a token stream,
let ``F_c`` be the positions where code ``c`` is among the selected ones and ``T`` the positions
of a target (a token, a regex over the decoded text, an FSM state). Then

    precision(c) = |F_c ∩ T| / |F_c|,      recall(c) = |F_c ∩ T| / |T|,

and the best detector maximises F1 = 2PR / (P + R). `detector_stats` computes the full
``[codes, labels]`` tables in one pass (an ``index_add`` of one-hot labels per selected code),
so it serves a binary target and the FSM's per-state table alike.

Steering: `generate` decodes with chosen codes forced on (`CodebookModel.forcing`) at chosen
sites and positions of the prompt and/or of every generated token; the paper forces a code to
move a model toward the behaviour the code detects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from mechscope.sae.codebook_features.model import CodebookModel


class DetectorStats(NamedTuple):
    """``precision``/``recall`` ``[codes, labels]``, ``fires [codes]`` (positions where each code
    is selected), ``support [labels]`` (positions of each label)."""

    precision: Float[Tensor, "C L"]
    recall: Float[Tensor, "C L"]
    fires: Int[Tensor, " C"]
    support: Int[Tensor, " L"]

    def f1(self) -> Float[Tensor, "C L"]:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r).clamp_min(1e-12)


def detector_stats(codes: Int[Tensor, "n k"], labels: Int[Tensor, " n"], n_codes: int,
                   n_labels: int) -> DetectorStats:
    """Precision/recall of every code as a detector of every label (label -1 = no label; a
    code listed twice in a row counts once)."""
    if codes.ndim != 2 or labels.shape != codes.shape[:1]:
        raise ValueError(f"codes must be [n, k] and labels [n]; got {tuple(codes.shape)}, {tuple(labels.shape)}")
    if codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < n_codes:
        raise ValueError(f"code indices must be in [0, {n_codes})")
    if labels.numel() and not -1 <= int(labels.min()) <= int(labels.max()) < n_labels:
        raise ValueError(f"labels must be in [-1, {n_labels})")
    fired = torch.zeros(len(codes), n_codes, dtype=torch.bool).scatter_(1, codes.cpu(), True).float()
    onehot = torch.zeros(len(labels), n_labels + 1)
    onehot[torch.arange(len(labels)), labels.cpu().clamp_min(-1) % (n_labels + 1)] = 1.0
    onehot = onehot[:, :n_labels]  # label -1 lands in the dropped last column
    joint = fired.T @ onehot
    fires = fired.sum(0)
    support = onehot.sum(0)
    return DetectorStats(joint / fires.clamp_min(1)[:, None], joint / support.clamp_min(1)[None],
                         fires.long(), support.long())


def token_mask(tokens: Int[Tensor, "b pos"], token_ids: Sequence[int]) -> Bool[Tensor, "b pos"]:
    """Positions holding any of ``token_ids``."""
    return torch.isin(tokens, torch.as_tensor(list(token_ids), dtype=tokens.dtype))


def regex_mask(str_tokens: Sequence[Sequence[str]], pattern: str) -> Bool[Tensor, "b pos"]:
    """Per sequence of decoded tokens: the positions whose token holds the last character of a
    match of ``pattern`` in the joined text (the context has just completed the pattern)."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    out = torch.zeros(len(str_tokens), max((len(s) for s in str_tokens), default=0), dtype=torch.bool)
    for i, toks in enumerate(str_tokens):
        ends = torch.tensor([len(t) for t in toks]).cumsum(0)
        for m in rx.finditer("".join(toks)):
            if m.end() > m.start():
                out[i, int(torch.searchsorted(ends, m.end() - 1, right=True))] = True
    return out


class CodeMatch(NamedTuple):
    """One code as a detector of a target: site, head group, code index and its scores."""

    site: str
    group: int
    code: int
    precision: float
    recall: float
    fires: int


@torch.no_grad()
def find_codes(cbm: "CodebookModel", tokens: Int[Tensor, "b pos"], target: Bool[Tensor, "b pos"],
               sites: Sequence[str] | None = None, top: int = 5, min_fires: int = 1,
               skip_first: bool = True) -> list[CodeMatch]:
    """The ``top`` codes (over ``sites``, default all) with the best F1 as detectors of ``target``."""
    if target.shape != tokens.shape:
        raise ValueError(f"target mask {tuple(target.shape)} must match tokens {tuple(tokens.shape)}")
    if not target.any():
        raise ValueError("the target occurs nowhere in the tokens; nothing to detect")
    start = 1 if skip_first else 0
    labels = target[:, start:].reshape(-1).long()  # 1 = target, 0 = other
    found: list[CodeMatch] = []
    for name, codes in cbm.codes(tokens).items():
        if sites is not None and name not in sites:
            continue
        for g in range(codes.shape[2]):
            st = detector_stats(codes[:, start:, g].reshape(-1, codes.shape[-1]), labels,
                                cbm.spec.n_codes, 2)
            f1 = st.f1()[:, 1].masked_fill(st.fires < min_fires, -1.0)
            for c in f1.topk(min(top, len(f1))).indices.tolist():
                found.append(CodeMatch(name, g, c, float(st.precision[c, 1]), float(st.recall[c, 1]),
                                       int(st.fires[c])))
    if sites is not None and not found:
        raise ValueError(f"none of {list(sites)} is a codebook site of this model")
    found.sort(key=lambda m: -2 * m.precision * m.recall / max(m.precision + m.recall, 1e-12))
    return found[:top]


@torch.no_grad()
def generate(cbm: "CodebookModel", prompt: Int[Tensor, "b pos"], new_tokens: int,
             force: dict[str, Sequence] | None = None, positions: Sequence[int] | None = None,
             force_generated: bool = False, temperature: float = 0.0,
             generator: torch.Generator | None = None) -> Int[Tensor, "b pos_out"]:
    """Extend ``prompt`` by ``new_tokens`` tokens (greedy if ``temperature`` is 0) with ``force``
    codes forced at prompt ``positions`` (indices into the prompt) and, with
    ``force_generated``, at every generated position."""
    if new_tokens < 0:
        raise ValueError(f"new_tokens must be >= 0, got {new_tokens}")
    n = prompt.shape[1]
    pos = [p % n for p in (positions if positions is not None else range(n))]
    tokens = prompt.to(cbm.device)
    cbm.eval()
    for _ in range(new_tokens):
        at = pos + (list(range(n, tokens.shape[1])) if force_generated else [])
        if force:
            with cbm.forcing(force, positions=at):
                logits = cbm(tokens)[:, -1]
        else:
            logits = cbm(tokens)[:, -1]
        if temperature > 0:
            nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)
        else:
            nxt = logits.argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, nxt], 1)
    return tokens
