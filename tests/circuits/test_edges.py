"""Edge-level circuits: the edge-masked forward against the clean / corrupted runs and against
path patching, EAP against single-edge removal, EAP-IG on planted circuits."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.edges import (EdgeTask, edge_circuit, edge_mask, edge_scores, faithfulness,
                                      masked_metric, on_complete_paths, reference_outputs)
from mechscope.circuits.graph import Node
from mechscope.circuits.known import (PLANTED_INDUCTION, induction_setup, planted_copy_model,
                                      planted_induction_model, planted_setup)
from mechscope.circuits.verify import score_against
from mechscope.interp.components import ComponentGraph
from mechscope.interp.intervene import path_patch


def _recording_task(model, tokens):
    seen = []

    def metric(logits):
        seen.append(logits.detach())
        return logits[:, -1, 0]
    corrupt = torch.randint(0, model.d_vocab, tokens.shape, generator=torch.Generator().manual_seed(1))
    return EdgeTask(model, tokens, metric, "patch", corrupt), seen


def test_masked_forward_all_edges_is_clean_none_is_corrupted(tiny_model, tokens):
    task, seen = _recording_task(tiny_model, tokens)
    g = task.graph
    masked_metric(task, g.upstream)
    masked_metric(task, torch.zeros_like(g.upstream))
    clean, corrupt = tiny_model(tokens), tiny_model(task.patch)
    torch.testing.assert_close(seen[-2], clean.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[-1], corrupt.detach(), atol=1e-4, rtol=1e-4)
    assert (clean - corrupt).abs().max() > 0.1


def test_one_cut_edge_is_path_patching(tiny_gpt2, tokens):
    # cutting u -> r alone feeds r the input it would have with u's reference output: the same
    # intervention as path patching u into r (two implementations, one answer)
    task, seen = _recording_task(tiny_gpt2, tokens)
    g = task.graph
    for sender, receiver, site, spec in [("L0.H1", "L1.H2.v", "L0.z.H1", "L1.v.H2"),
                                         ("L0.H3", "L1.H0.k", "L0.z.H3", "L1.k.H0"),
                                         ("embed", "L0.mlp", "L0.resid_pre", "L0.mlp_in"),
                                         ("L0.mlp", "logits", "L0.mlp_out", "logits")]:
        keep = g.upstream.clone()
        keep[g.senders.index(sender), g.receivers.index(receiver)] = False
        masked_metric(task, keep)
        want = path_patch(tiny_gpt2, tokens, site, [spec], ref_tokens=task.patch)
        torch.testing.assert_close(seen[-1], want, atol=1e-5, rtol=1e-5)
        assert (want - tiny_gpt2(tokens)).abs().max() > 1e-4


def test_eap_into_the_logits_is_exact_on_a_linear_readout():
    # no LayerNorm, a logit-difference metric: the metric is linear in the logits' input, so
    # EAP of an edge into the logits equals the metric change when that edge alone is cut
    model = planted_copy_model()
    s = planted_setup(model, n_prompts=4)
    task = EdgeTask(model, s.clean, s.metric, "patch", s.patch)
    g, ref = task.graph, reference_outputs(task)
    scores = edge_scores(task, "eap")
    m0 = masked_metric(task, g.upstream, ref).mean()
    for sender in ("embed", "L0.H1", "L1.H2", "L1.H0"):
        keep = g.upstream.clone()
        keep[g.senders.index(sender), g.logits] = False
        real = float(masked_metric(task, keep, ref).mean() - m0)
        assert float(scores[g.senders.index(sender), g.logits]) == pytest.approx(real, abs=1e-4)
    assert (scores[~g.upstream] == 0).all()


def test_eap_ig_recovers_the_planted_copy_circuit_edge_for_edge():
    model = planted_copy_model()
    s = planted_setup(model, n_prompts=8)
    task = EdgeTask(model, s.clean, s.metric, "patch", s.patch)
    ids = lambda *nodes: tuple(n.id for n in nodes)  # noqa: E731 - whatever the id grammar
    embed, logit = Node("embedding", -1), Node("logit", 2)
    h01, h12 = Node("head", 0, None, 1), Node("head", 1, None, 2)
    truth = {ids(embed, h01): "v", ids(h01, h12): "v", ids(h12, logit): "out"}
    for method in ("eap", "eap-ig"):
        graph = edge_circuit(task, method)
        assert set(graph.edges) == set(truth), (method, graph.edges)  # precision = recall = 1
        chans = graph.meta.details["channels"]
        assert {e: list(chans[f"{e[0]}->{e[1]}"]) for e in truth} == {e: [c] for e, c in truth.items()}
        assert graph.meta.faithfulness > 0.99
        assert faithfulness(task, edge_mask(task.graph, graph)) == graph.meta.faithfulness


def test_eap_ig_recovers_planted_induction_where_eap_does_not():
    # saturated previous-token attention: the clean gradient misses it (EAP keeps a distractor
    # head), the integrated one finds exactly the two planted heads
    model = planted_induction_model()
    s = induction_setup(model, n_prompts=8, period=7)
    task = EdgeTask(model, s.clean, s.metric, "mean")
    ig = score_against(edge_circuit(task, "eap-ig"), PLANTED_INDUCTION.components)
    assert (ig.precision, ig.recall) == (1.0, 1.0), ig
    eap = score_against(edge_circuit(task, "eap"), PLANTED_INDUCTION.components)
    assert eap.precision < 1.0


def test_complete_paths_and_validation(tiny_gpt2, tokens):
    g = ComponentGraph.of(tiny_gpt2)
    assert g.n_edges == int(g.upstream.sum()) and g.upstream[:, g.logits].all()
    keep = torch.zeros_like(g.upstream)
    keep[g.senders.index("L0.H1"), g.receivers.index("L1.H2.v")] = True  # dangling both ends
    assert not on_complete_paths(g, keep).any()
    keep[0, g.receivers.index("L0.H1.q")] = True
    keep[g.senders.index("L1.H2"), g.logits] = True
    assert on_complete_paths(g, keep).sum() == 3
    with pytest.raises(ValueError, match="needs corrupted prompts"):
        EdgeTask(tiny_gpt2, tokens, lambda x: x[:, -1, 0], "patch")
    with pytest.raises(ValueError, match="valid: patch, mean, zero"):
        EdgeTask(tiny_gpt2, tokens, lambda x: x[:, -1, 0], "median")
    with pytest.raises(ValueError, match="senders x receivers"):
        masked_metric(EdgeTask(tiny_gpt2, tokens, lambda x: x[:, -1, 0], "mean"), keep[1:])
