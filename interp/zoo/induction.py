"""Repeated-random-segment data and the induction-circuit checks of ``attn-only-induction``.

Data: ``[BOS] + x x x ...`` truncated to ``seq_len``, with ``x`` a uniformly random token segment
of a per-row random period ``p`` in ``[min_period, max_period]``. A varying period matters: with a
fixed ``[BOS] + x + x`` the model can solve the task by absolute position (layer-0 heads attending
to ``i - |x| + 1``) and no induction circuit forms (NOTES.md). Only targets in the repeats
(position ``>= p + 1``) are predictable and enter the loss.

Checks (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Olsson et al.
2022, "In-context Learning and Induction Heads"):

* previous-token score of head h: mean attention ``A[i, i-1]`` over positions ``i >= 2``;
* induction score: on ``[BOS] + x + x`` (period p), mean ``A[i, i-p+1]`` over the second copy,
  i.e. attention to the token after the previous occurrence of the current token;
* head ablation: increase of the repeat loss when one head's output (``hook_z``) is zeroed;
* K-composition of a layer-0 head a into layer-1 head b:
  ``||W_QK^b (W_OV^a)^T||_F / (||W_QK^b||_F ||W_OV^a||_F)`` with ``W_QK = W_Q W_K^T`` and
  ``W_OV = W_V W_O`` (TransformerLens layout, row vectors), since a layer-1 key reads
  ``x W_OV^a W_K``.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechscope.interp.tokens import bos_token_id

FIRST_SYMBOL = 2  # ids 0, 1 are EOS and BOS; the rest are the printable characters
BOS_ID = 1  # the zoo tokenizer's BOS, also used for models built without a tokenizer


def repeated_batch(batch: int, seq_len: int, vocab: int, min_period: int, max_period: int,
                   bos: int, gen: torch.Generator) -> tuple[Int[Tensor, "b s"], Bool[Tensor, "b s"]]:
    """Rows ``[BOS] + x x x ...`` with a random period per row, and the mask of repeat targets."""
    if not 1 <= min_period <= max_period < seq_len:
        raise ValueError(f"need 1 <= min_period <= max_period < seq_len, got "
                         f"{min_period}, {max_period}, {seq_len}")
    periods = torch.randint(min_period, max_period + 1, (batch,), generator=gen)
    segs = torch.randint(FIRST_SYMBOL, vocab, (batch, max_period), generator=gen)
    pos = torch.arange(seq_len - 1)
    idx = pos[None, :] % periods[:, None]
    body = torch.gather(segs, 1, idx)
    tokens = torch.cat([torch.full((batch, 1), bos, dtype=torch.long), body], dim=1)
    mask = torch.arange(seq_len)[None, :] >= periods[:, None] + 1
    return tokens, mask


def _bos(model) -> int:
    bos = bos_token_id(model.tokenizer)
    return BOS_ID if bos is None else bos


def _patterns(model, tokens: Tensor) -> list[Float[Tensor, "b h q k"]]:
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return [cache[n] for n in names]


def head_scores(model, period: int = 20, n_rows: int = 64, seed: int = 1234) -> dict:
    """Previous-token and induction scores ``[n_layers, n_heads]`` on fresh ``[BOS] + x + x``."""
    gen = torch.Generator().manual_seed(seed)
    bos = _bos(model)
    tokens, _ = repeated_batch(n_rows, 2 * period + 1, model.cfg.d_vocab, period, period, bos, gen)
    tokens = tokens.to(model.cfg.device)
    prev, ind = [], []
    q = torch.arange(2, tokens.shape[1])
    q2 = torch.arange(period + 1, tokens.shape[1])
    for pat in _patterns(model, tokens):
        prev.append(pat[:, :, q, q - 1].mean(dim=(0, 2)))
        ind.append(pat[:, :, q2, q2 - period + 1].mean(dim=(0, 2)))
    return {"prev_token": torch.stack(prev).cpu(), "induction": torch.stack(ind).cpu()}


def repeat_loss(model, tokens: Tensor, mask: Tensor,
                ablate: tuple[int, int] | list[tuple[int, int]] | None = None) -> float:
    """Loss on repeat targets, with the heads ``(layer, head)`` in ``ablate`` zeroed at ``hook_z``."""
    from mechscope.interp.lm_train import next_token_loss

    heads = [] if ablate is None else [ablate] if isinstance(ablate, tuple) else list(ablate)

    def zero_heads(layer):
        def hook(z, hook):
            for l, h in heads:
                if l == layer:
                    z[:, :, h] = 0.0
            return z
        return hook

    hooks = [(f"blocks.{l}.attn.hook_z", zero_heads(l)) for l in sorted({l for l, _ in heads})]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return next_token_loss(logits, tokens, mask).item()


def k_composition(model) -> Float[Tensor, "h1 h0"]:
    """K-composition scores ``[layer-1 head, layer-0 head]``."""
    with torch.no_grad():
        qk = model.W_Q[1] @ model.W_K[1].transpose(-1, -2)  # [h, d, d]
        ov = model.W_V[0] @ model.W_O[0]  # [h, d, d]
        comp = torch.einsum("bij,akj->baik", qk, ov)
        num = comp.flatten(-2).norm(dim=-1)
        den = qk.flatten(-2).norm(dim=-1)[:, None] * ov.flatten(-2).norm(dim=-1)[None, :]
    return num / den


def circuit_report(model, seq_len: int, min_period: int, max_period: int, seed: int = 4321) -> dict:
    """Which heads form the circuit, with scores, ablation effects and K-composition."""
    scores = head_scores(model, seed=seed)
    prev_head = int(scores["prev_token"][0].argmax())
    ind_head = int(scores["induction"][1].argmax())
    gen = torch.Generator().manual_seed(seed + 1)
    bos = _bos(model)
    tokens, mask = repeated_batch(128, seq_len, model.cfg.d_vocab, min_period, max_period, bos, gen)
    base = repeat_loss(model, tokens, mask)
    ablation = [[repeat_loss(model, tokens, mask, (l, h)) - base for h in range(model.cfg.n_heads)]
                for l in range(model.cfg.n_layers)]
    ind_heads = [h for h in range(model.cfg.n_heads) if scores["induction"][1, h] > 0.5]
    joint = repeat_loss(model, tokens, mask, [(1, h) for h in ind_heads]) - base if ind_heads else 0.0
    comp = k_composition(model)
    r = lambda t: [[round(float(v), 4) for v in row] for row in t]  # noqa: E731
    return {
        "prev_token_head": [0, prev_head],
        "induction_head": [1, ind_head],
        "induction_heads": [[1, h] for h in ind_heads],
        "prev_token_heads": [[0, h] for h in range(model.cfg.n_heads)
                             if scores["prev_token"][0, h] > 0.5],
        "prev_token_scores": r(scores["prev_token"]),
        "induction_scores": r(scores["induction"]),
        "score_setup": "mean attention over 64 fresh [BOS]+x+x rows, |x| = 20; prev-token: A[i,i-1], "
                       "i>=2; induction: A[i,i-19] over the second copy",
        "repeat_loss": round(base, 4),
        "ablation_loss_increase": r(ablation),
        "ablation_loss_increase_all_induction_heads": round(joint, 4),
        "ablation_setup": f"zero hook_z of one head, 128 rows of length {seq_len}, periods "
                          f"{min_period}-{max_period}, loss on repeat targets",
        "k_composition": r(comp),
        "k_composition_layout": "[layer-1 head][layer-0 head]",
        "k_composition_circuit": round(float(comp[ind_head, prev_head]), 4),
    }
