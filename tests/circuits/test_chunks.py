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
        next(s.chunks(0))


def _setups(model, ablation):
    from mechscope.circuits.attribution import logit_diff

    d = TinyDict(32, 16)
    out = []
    for n, p, seed in ((3, 6, 0), (2, 9, 1)):
        clean = toks(n, p, vocab=100, seed=seed)
        metric = logit_diff(torch.arange(1, n + 1), torch.arange(10, 10 + n))
        out.append(Setup.build(model, {"L0.resid_post": d, "L1.z": None}, metric, clean, ablation=ablation))
    return out


def test_prompts_of_different_lengths_in_one_trace(tiny_gpt2):
    from mechscope.circuits.feature_circuits import faithfulness, trace

    a, b = _setups(tiny_gpt2, "zero")
    g, f = trace([a, b], method="atp", node_threshold=0.0)
    each = [feature_circuit(s, method="atp", node_threshold=0.0) for s in (a, b)]
    for nid, node in g.nodes.items():  # scores and edges: means over all five prompts
        want = sum(w * e.nodes[nid].score for w, e in zip((0.6, 0.4), each) if nid in e.nodes)
        assert node.score == pytest.approx(want, abs=1e-5)
    for e, w in g.edges.items():
        assert w == pytest.approx(sum(s * x.edges.get(e, 0.0) for s, x in zip((0.6, 0.4), each)), abs=1e-5)
    assert g.meta.n_prompts == 5 and len(g.meta.prompts) == 5 and g.meta.parameters["seq_len"] == [6, 9]
    fs = [faithfulness(g, s) for s in (a, b)]
    assert f.m_circuit == pytest.approx(0.6 * fs[0].m_circuit + 0.4 * fs[1].m_circuit, abs=1e-5)
    with pytest.raises(ValueError, match="one length"):
        feature_circuit([a, b], per_position=True)


def test_mean_reference_is_pooled_over_all_groups(tiny_gpt2):
    from mechscope.circuits.attribution import as_groups, reference
    from mechscope.interp.capture import capture

    a, b = _setups(tiny_gpt2, "mean")
    as_groups([a, b])
    site = a.sites[1]  # L1.z: one node per head, parts [b, p, H, d_head]
    rows = [capture(tiny_gpt2, s.clean, [site])[site].flatten(0, 1) for s in (a, b)]
    pooled = torch.cat(rows).mean(0)
    for s in (a, b):
        torch.testing.assert_close(reference(s)[site][0][0, 0], pooled, atol=1e-5, rtol=1e-5)


def test_undefined_faithfulness_is_none_with_a_warning(tiny_gpt2):
    from mechscope.circuits.attribution import _named
    from mechscope.circuits.feature_circuits import trace

    flat = _named(lambda logits: logits[:, 0, 0] * 0.0, "flat")
    s = Setup.build(tiny_gpt2, ["L1.z"], flat, toks(2, 6, vocab=100), ablation="zero")
    with pytest.warns(UserWarning, match="undefined"):
        g, f = trace(s, node_threshold=0.0)
    assert f.faithfulness is None and g.meta.faithfulness is None


def test_path_grads_in_chunks_of_points_equal_one_pass(setup):
    # rows = targets x steps x prompts: splitting targets and steps across passes sums the same
    # midpoint gradients
    from mechscope.circuits.feature_circuits import path_grads

    up, down = setup.sites
    targets = [(0, None), (2, 3), (3, None)]
    whole = path_grads(setup, up, down, targets, steps=4, step_chunk=None)
    for step_chunk in (1, 3, 4, 9):
        got = path_grads(setup, up, down, targets, steps=4, step_chunk=step_chunk)
        for a, b in zip(got, whole, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="step_chunk"):
        path_grads(setup, up, down, targets, steps=4, step_chunk=0)


def test_a_chunk_is_freed_before_the_next_is_made(setup):
    alive = []
    for sub, _ in setup.chunks(2):
        assert all(not s._cache.get("clean") for s in alive)  # earlier chunks hold no runs
        node_scores(sub, "atp")
        assert "clean" in sub._cache
        alive.append(sub)
    assert setup._cache["passes"] >= 3 and setup._cache["backward"] >= 3


def test_chunked_faithfulness_and_verification_equal_the_batch(setup):
    # interventions are means over prompts: chunks of prompts add up to the batch
    from mechscope.circuits.feature_circuits import faithfulness
    from mechscope.circuits.verify import verify_edges

    g = feature_circuit(setup, method="atp", node_threshold=0.03, relative=True)
    assert len(g.edges) > 2
    whole_f, whole_v = faithfulness(g, setup), verify_edges(g, setup)
    for chunk in (1, 2):
        f, v = faithfulness(g, setup, chunk), verify_edges(g, setup, chunk)
        assert f[2:6] == pytest.approx(whole_f[2:6], abs=1e-5)
        assert v.node_ids == whole_v.node_ids and v.edge_ids == whole_v.edge_ids
        assert v.node_effect == pytest.approx(whole_v.node_effect, abs=1e-5)
        assert v.edge_effect == pytest.approx(whole_v.edge_effect, abs=1e-5)


def test_verification_over_two_lengths_is_the_weighted_combination(tiny_gpt2):
    from mechscope.circuits.verify import verify_edges

    a, b = _setups(tiny_gpt2, "zero")
    g = feature_circuit([a, b], method="atp", node_threshold=0.03, relative=True)
    both, each = verify_edges(g, [a, b], chunk=2), [verify_edges(g, s) for s in (a, b)]
    assert len(both.edge_ids) > 2
    for got, x, y in zip(both.node_effect + both.edge_effect, each[0].node_effect + each[0].edge_effect,
                         each[1].node_effect + each[1].edge_effect):
        assert got == pytest.approx(0.6 * x + 0.4 * y, abs=1e-5)
