"""Firing margins: > 0 exactly where the dictionary's own encode fires, for every architecture."""

from __future__ import annotations

import pytest
import torch

from mechscope.sae import config as C
from mechscope.sae.gated import GatedSAE
from mechscope.sae.jumprelu import JumpReluSAE
from mechscope.sae.margins import _kth_of_others, firing_margin, has_firing_margin
from mechscope.sae.matching_pursuit import MatchingPursuitSAE
from mechscope.sae.relu import ReluSAE
from mechscope.sae.topk import BatchTopKSAE, TopKSAE

D_IN, D_DICT, K = 8, 16, 3


def build(arch: str):
    cls, cfg = {"topk": (TopKSAE, C.TopKConfig), "batchtopk": (BatchTopKSAE, C.BatchTopKConfig),
                "jumprelu": (JumpReluSAE, C.JumpReluConfig), "relu": (ReluSAE, C.ReluConfig),
                "gated": (GatedSAE, C.GatedConfig)}[arch]
    sae = cls(cfg(d_in=D_IN, d_dict=D_DICT, k=K))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        sae.scale_in.fill_(1.7)  # margins are read on the normalised input, like encode
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_DICT, generator=g))
        if arch == "batchtopk":
            sae.threshold.fill_(0.4)
    return sae


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu", "gated"])
def test_margin_is_positive_exactly_where_the_code_fires(arch):
    sae = build(arch)
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fires = sae.encode(x).dense(D_DICT) != 0
        m = firing_margin(sae, x)
    assert has_firing_margin(sae) and m.shape == (256, D_DICT)
    assert fires.any() and (~fires).any()
    assert torch.equal(m > 0, fires)
    if arch in ("jumprelu", "relu", "topk", "batchtopk"):  # where it fires, margin <= activation = z
        with torch.no_grad():
            act = sae.encode(x).dense(D_DICT)
        assert (m[fires] <= act[fires] + 1e-5).all()


def test_margin_is_differentiable_where_the_code_is_flat():
    sae = build("topk")
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1), requires_grad=True)
    off = (sae.encode(x.detach()).dense(D_DICT) == 0)
    (firing_margin(sae, x) * off).sum().backward()
    assert x.grad.abs().sum() > 0


def test_kth_of_others_by_brute_force():
    z = torch.randn(20, 9, generator=torch.Generator().manual_seed(2))
    for k in (1, 3, 8):
        got = _kth_of_others(z, k)
        for n in range(20):
            for i in range(9):
                others = torch.cat([z[n, :i], z[n, i + 1:]])
                assert float(got[n, i]) == float(others.topk(k).values[-1])
    assert torch.isinf(_kth_of_others(z, 9)).all()  # fewer than k others: always in the top k


def test_no_margin_for_dictionaries_without_a_thresholded_encoder():
    mp = MatchingPursuitSAE(C.MatchingPursuitConfig(d_in=D_IN, d_dict=D_DICT, k=2))
    assert not has_firing_margin(mp) and firing_margin(mp, torch.zeros(2, D_IN)) is None
