"""`build_dictionary(config, train)`: the architecture of a `DictionaryConfig`, freshly initialised."""

from __future__ import annotations

import torch

from mechscope.sae.base import SparseDictionary
from mechscope.sae.config import DictionaryConfig, TrainConfig


def dictionary_classes() -> dict[str, type[SparseDictionary]]:
    """Every architecture's class, by name (the registry `mechscope.sae.io` loads through)."""
    from mechscope.sae.codebook import CodebookDictionary
    from mechscope.sae.gated import GatedSAE
    from mechscope.sae.jumprelu import JumpReluSAE
    from mechscope.sae.matryoshka import MatryoshkaSAE
    from mechscope.sae.matching_pursuit import MatchingPursuitSAE
    from mechscope.sae.relu import ReluSAE
    from mechscope.sae.topk import BatchTopKSAE, TopKSAE

    return {c.architecture: c for c in (TopKSAE, BatchTopKSAE, MatryoshkaSAE, ReluSAE, GatedSAE,
                                        JumpReluSAE, MatchingPursuitSAE, CodebookDictionary)}


def dictionary_class(architecture: str) -> type[SparseDictionary]:
    classes = dictionary_classes()
    if architecture not in classes:
        raise ValueError(f"unknown architecture {architecture!r}; valid: {', '.join(classes)}")
    return classes[architecture]


def build_dictionary(cfg: DictionaryConfig, train: TrainConfig | None = None) -> SparseDictionary:
    """A new dictionary whose initial weights depend only on ``cfg`` and ``train.seed`` (0 without
    a `TrainConfig`)."""
    seed = train.seed if train is not None else 0
    return dictionary_class(cfg.architecture)(cfg, train, torch.Generator().manual_seed(seed))
