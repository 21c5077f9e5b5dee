"""`build_dictionary(config)`: the architecture named by a `TrainConfig`, freshly initialised."""

from __future__ import annotations

import torch

from mechscope.sae.base import SparseDictionary
from mechscope.sae.config import TrainConfig


def dictionary_class(architecture: str) -> type[SparseDictionary]:
    from mechscope.sae.codebook import CodebookDictionary
    from mechscope.sae.jumprelu import JumpReluSAE
    from mechscope.sae.matching_pursuit import MatchingPursuitSAE
    from mechscope.sae.relu import ReluSAE
    from mechscope.sae.topk import BatchTopKSAE, TopKSAE

    classes = {c.architecture: c for c in (TopKSAE, BatchTopKSAE, ReluSAE, JumpReluSAE,
                                           MatchingPursuitSAE, CodebookDictionary)}
    if architecture not in classes:
        raise ValueError(f"unknown architecture {architecture!r}; valid: {', '.join(classes)}")
    return classes[architecture]


def build_dictionary(cfg: TrainConfig) -> SparseDictionary:
    """A new dictionary whose initial weights depend only on ``cfg`` (``cfg.seed``)."""
    return dictionary_class(cfg.architecture)(cfg, torch.Generator().manual_seed(cfg.seed))
