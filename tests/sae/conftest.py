"""Fixtures for the sae tests: a small-config factory and the recovery measure."""

from __future__ import annotations

import pytest
import torch

from mechscope.sae.config import RunConfig


def _cfg(**kw) -> RunConfig:
    """A small run config from flat fields (as in a job's [sae] table)."""
    base = dict(d_in=16, d_dict=48, k=3, steps=40, lr=3e-3, progress=False, log_every=10, dead_tokens=2000)
    base.update(kw)
    return RunConfig.from_dict(base)


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
