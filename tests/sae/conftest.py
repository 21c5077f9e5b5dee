"""Fixtures for the sae tests: a small-config factory and the recovery measure."""

from __future__ import annotations

import pytest
import torch

from mechscope.sae.config import TrainConfig


def _cfg(**kw) -> TrainConfig:
    base = dict(d_in=16, d_dict=48, k=3, steps=40, lr=3e-3, progress=False, log_every=10, dead_tokens=2000)
    base.update(kw)
    return TrainConfig(**base)


def _mean_max_cos(learned: torch.Tensor, true: torch.Tensor) -> float:
    """For each true direction the best cosine with a learned one, averaged over true directions."""
    learned = learned / learned.norm(dim=-1, keepdim=True)
    true = true / true.norm(dim=-1, keepdim=True)
    return float((true @ learned.T).max(1).values.mean())


@pytest.fixture
def make_cfg():
    return _cfg


@pytest.fixture
def mmcs():
    return _mean_max_cos


@pytest.fixture(autouse=True)
def _one_thread():
    # these tensors are tiny: on a shared 2-core machine one thread is ~10x faster than two
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
