"""Chunked attribution: prompts and IG steps in chunks give the batch's results."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.attribution import Setup, mean_node_scores, node_scores
from mechscope.circuits.feature_circuits import feature_circuit

from .helpers import TinyDict, ld, toks


@pytest.fixture(scope="module", params=["mean", "zero", "resample", "patch"])
def setup(request, tiny_gpt2):
    clean = toks(5, 8, vocab=100)
    patch = toks(5, 8, vocab=100, seed=3) if request.param == "patch" else None
    return Setup.build(tiny_gpt2, {"L0.resid_post": TinyDict(32, 16), "L1.z": None}, ld(5), clean,
                       ablation=request.param, patch=patch)


@pytest.mark.parametrize("method", ["atp", "ig"])
def test_chunked_node_scores_equal_the_batch(setup, method):
    whole = {s: v.mean(0) for s, v in node_scores(setup, method, steps=4).items()}
    for chunk, step_chunk in ((2, None), (1, 3), (5, 1)):
        got = mean_node_scores(setup, method, 4, chunk=chunk, step_chunk=step_chunk)
        for s in setup.sites:
            torch.testing.assert_close(got[s], whole[s], atol=1e-5, rtol=1e-4)


def test_chunked_circuit_equals_the_batch(setup):
    a = feature_circuit(setup, method="ig", steps=3, node_threshold=0.05, relative=True)
    b = feature_circuit(setup, method="ig", steps=3, node_threshold=0.05, relative=True, chunk=2, step_chunk=2)
    assert set(a.nodes) == set(b.nodes) and set(a.edges) == set(b.edges)
    for e, w in a.edges.items():
        assert b.edges[e] == pytest.approx(w, abs=1e-5, rel=1e-4)


def test_chunks_need_a_selectable_metric(tiny_gpt2):
    s = Setup.build(tiny_gpt2, ["L0.z"], lambda logits: logits[:, -1, 0], toks(3, 8, vocab=100))
    with pytest.raises(ValueError, match="select"):
        s.select(slice(0, 1))
    with pytest.raises(ValueError, match="chunk size"):
        s.chunks(0)
