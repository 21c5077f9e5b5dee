"""Fine-tuning a language model through its codebook bottlenecks, and what it costs.

Objective: the mean next-token cross-entropy ``L_LM`` (nats) plus the `CodebookModel`'s
auxiliary codebook and commitment terms (see `mechscope.sae.codebook_features.model`); the whole
network is fine-tuned through the straight-through bottlenecks, as in Tamkin et al. 2023
("Codebook Features"), section 3, by the one LM training loop
(`mechscope.interp.lm_train.train_lm`: AdamW, linear warm-up, cosine decay to
``min_lr_ratio · lr``), with dead codes replaced after every step. Pre-training the base model
is the same loop without the extra terms.

`loss_increase` is the paper's cost measure: held-out ``L_LM`` of the model with codebooks
minus that of the model before codebooks were added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from jaxtyping import Int
from torch import Tensor

from mechscope.interp.lm_train import LMTrainConfig, LMTrainResult, Sampler, eval_loss, train_lm

if TYPE_CHECKING:
    from mechscope.sae.codebook_features.model import CodebookModel


def finetune(cbm: "CodebookModel", sample: Sampler, cfg: LMTrainConfig,
             log: Callable[[dict], None] | None = None) -> LMTrainResult:
    """Train ``cbm`` (network and codebooks) on batches from ``sample``; the logged rows carry
    ``aux_loss`` (codebook + commitment) and ``replaced_codes`` (dead codes re-seeded)."""
    return train_lm(cbm, sample, cfg, aux_loss=cbm.aux_loss,
                    after_step=lambda gen: {"replaced_codes": cbm.after_step(gen)}, log=log)


class LossReport(NamedTuple):
    """Held-out LM loss (nats/token): ``base`` model before codebooks, the fine-tuned model with
    its codebooks, the same weights with codebooks bypassed, and ``increase = codebook − base``."""

    base: float
    codebook: float
    bypassed: float
    increase: float


def loss_increase(base: Any, cbm: "CodebookModel", windows: Int[Tensor, "w pos"]) -> LossReport:
    b = eval_loss(base, windows, batch=64)
    c = eval_loss(cbm, windows, batch=64)
    with cbm.disabled():
        by = eval_loss(cbm, windows, batch=64)
    return LossReport(b, c, by, c - b)


__all__ = ["LossReport", "finetune", "loss_increase"]
