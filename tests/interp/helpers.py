"""Test helpers for the activation stream and cache tests: a random token corpus and exact batch
comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mechscope.interp.activations import ActivationBatch
from mechscope.interp.token_memmap import write_token_memmap


def random_token_file(path: Path, n_docs: int) -> Path:
    """``n_docs`` documents of 3-29 random ids in [2, 100), separator 1, BOS 0 (seeded)."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 100, size=int(n)).tolist() for n in rng.integers(3, 30, size=n_docs)]
    return write_token_memmap(path, docs, sep_id=1, bos_id=0)


def assert_same(a: ActivationBatch, b: ActivationBatch) -> None:
    """Same sites, bitwise-equal activations of the same dtype, same token ids and positions."""
    assert a.sites == b.sites
    for s in a.sites:
        assert a.acts[s].dtype == b.acts[s].dtype and torch.equal(a.acts[s], b.acts[s]), s
    for f in ("token_ids", "seq_index", "positions"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
