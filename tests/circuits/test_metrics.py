"""Metrics: hand-computed values at chosen / per-prompt / all positions, numerical answers, user
metrics through trace, edges and verify, and undefined faithfulness."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.circuits import metrics as M
from mechscope.circuits.attribution import Setup, mean_node_scores
from mechscope.circuits.edges import EdgeTask, edge_circuit, edge_scores

LOG3 = math.log(3.0)


def _logits() -> torch.Tensor:
    """[2 prompts, 3 positions, 4 tokens]; at every position one logit is log 3, the rest 0, so
    the probabilities are 3/6 for that token and 1/6 for the others."""
    x = torch.zeros(2, 3, 4)
    hot = [[1, 2, 3], [0, 1, 2]]  # the log-3 token per (prompt, position)
    for b in range(2):
        for p in range(3):
            x[b, p, hot[b][p]] = LOG3
    return x


def test_single_position_metrics_by_hand():
    x = _logits()
    torch.testing.assert_close(M.logit_diff(torch.tensor([1, 1]), torch.tensor([0, 0]), 0)(x),
                               torch.tensor([LOG3, -LOG3]))
    torch.testing.assert_close(M.logit_diff(1, 0, 0)(x), torch.tensor([LOG3, -LOG3]))  # ints broadcast
    torch.testing.assert_close(M.logprob(torch.tensor([3, 3]))(x),  # last position: 3 is hot, then not
                               torch.tensor([math.log(0.5), math.log(1 / 6)]))


def test_positions_list_all_and_per_prompt():
    x = _logits()
    # token 1 logit at positions 0,1,2: prompt 0: log3, 0, 0; prompt 1: 0, log3, 0
    torch.testing.assert_close(M.logit_diff(1, 3, "all")(x),
                               torch.tensor([(LOG3 + 0 - LOG3) / 3, LOG3 / 3]))
    torch.testing.assert_close(M.logit_diff(1, 3, [0, 1])(x), torch.tensor([LOG3 / 2, LOG3 / 2]))
    per = M.logprob(torch.tensor([1, 1]), torch.tensor([0, 1]))  # each prompt's answer position
    torch.testing.assert_close(per(x), torch.tensor([math.log(0.5), math.log(0.5)]))
    # select: the metric of a subset of prompts is the subset of the metric
    for m in (per, M.logit_diff(torch.tensor([1, 2]), torch.tensor([0, 3]), "all")):
        torch.testing.assert_close(m.select(torch.tensor([1]))(x[1:]), m(x)[1:])
    with pytest.raises(ValueError, match="unknown position"):
        M.logprob(1, "last")
    with pytest.raises(ValueError, match="out of range"):
        M.logprob(1, 5)(x)


def test_number_metrics_by_hand():
    x = _logits()  # last position: prompt 0 hot token 3, prompt 1 hot token 2
    # expected value over tokens 1, 2, 3 valued 10, 20, 30 (renormalised over those tokens)
    ev = M.expected_value([1, 2, 3], [10.0, 20.0, 30.0])(x)
    want0 = (10 / 6 + 20 / 6 + 30 * 3 / 6) / (5 / 6)   # = 24
    want1 = (10 / 6 + 20 * 3 / 6 + 30 / 6) / (5 / 6)   # = 20
    torch.testing.assert_close(ev, torch.tensor([want0, want1]))
    raw = M.expected_value([1, 2, 3], [10.0, 20.0, 30.0], renormalise=False)(x)
    torch.testing.assert_close(raw, torch.tensor([want0 * 5 / 6, want1 * 5 / 6]))
    torch.testing.assert_close(M.prob_mass([2, 3])(x), torch.tensor([4 / 6, 4 / 6]))
    torch.testing.assert_close(M.prob_diff([3], [0, 1])(x), torch.tensor([3 / 6 - 2 / 6, 1 / 6 - 2 / 6]))
    # per-prompt sets ("greater than this prompt's year"): prompt 0 {3}, prompt 1 {2, 3}
    good = torch.tensor([[False, False, False, True], [False, False, True, True]])
    torch.testing.assert_close(M.prob_diff(good, ~good)(x), torch.tensor([3 / 6 - 3 / 6, 4 / 6 - 2 / 6]))
    torch.testing.assert_close(M.set_logit_diff([2, 3], [0])(x), torch.tensor([LOG3 / 2, LOG3 / 2]))
    sel = M.prob_diff(good, ~good)
    torch.testing.assert_close(sel.select(torch.tensor([1]))(x[1:]), sel(x)[1:])
    with pytest.raises(ValueError, match="one value per number token"):
        M.expected_value([1, 2], [1.0])


def test_custom_metric_checks_its_output():
    x = _logits()
    m = M.custom(lambda logits: logits[:, -1, 3])
    torch.testing.assert_close(m(x), torch.tensor([LOG3, 0.0]))
    target = torch.tensor([3, 2])
    per = M.custom(lambda logits, rows: logits[torch.arange(len(rows)), -1, target[rows]], "hot")
    torch.testing.assert_close(per(x), torch.tensor([LOG3, LOG3]))
    torch.testing.assert_close(per.select(torch.tensor([1]))(x[1:]), torch.tensor([LOG3]))
    with pytest.raises(ValueError, match=r"one value per prompt, a tensor \[2\]"):
        M.custom(lambda logits: logits[:, -1])(x)
    with pytest.raises(TypeError, match="must be callable"):
        M.custom(3)


def _planted():
    from mechscope.circuits.known import planted_copy_model, planted_setup

    model = planted_copy_model()
    return model, planted_setup(model, n_prompts=6)


def test_user_metric_through_trace_edges_and_verify():
    """A plain function with per-prompt data (``rows``) gives the same node scores (chunked too),
    edge scores and path-patching effects as the built-in logit difference."""
    from mechscope.circuits.verify import verify_edges
    from mechscope.circuits.feature_circuits import feature_circuit

    model, setup = _planted()
    a, b = setup.clean[:, 1], setup.patch[:, 1]

    def mine(logits, rows):  # logit[a] - logit[b] at the last position, written by a user
        last = logits[:, -1]
        r = torch.arange(last.shape[0])
        return last[r, a[rows]] - last[r, b[rows]]

    user = Setup.build(model, setup.sites, M.custom(mine), setup.clean, patch=setup.patch)
    for chunk in (None, 4):
        for s, v in mean_node_scores(user, "atp", chunk=chunk).items():
            torch.testing.assert_close(v, mean_node_scores(setup, "atp")[s])
    g_user = feature_circuit(user, node_threshold=0.5)
    g_ref = feature_circuit(setup, node_threshold=0.5)
    assert set(g_user.nodes) == set(g_ref.nodes) and g_user.edges.keys() == g_ref.edges.keys()
    plain = Setup.build(model, setup.sites, lambda logits: mine(logits, torch.arange(6)), setup.clean,
                        patch=setup.patch)  # a plain function: fine without chunks
    v_user, v_ref = verify_edges(g_user, plain), verify_edges(g_ref, setup)
    torch.testing.assert_close(torch.tensor(v_user.edge_effect), torch.tensor(v_ref.edge_effect))
    t_user = EdgeTask(model, setup.clean, lambda logits: mine(logits, torch.arange(6)), "patch", setup.patch)
    t_ref = EdgeTask(model, setup.clean, M.logit_diff(a, b), "patch", setup.patch)
    torch.testing.assert_close(edge_scores(t_user, "eap"), edge_scores(t_ref, "eap"))


def test_undefined_faithfulness_is_none_with_a_warning():
    model, setup = _planted()
    flat = EdgeTask(model, setup.clean, lambda logits: logits[:, 0, 0] * 0, "patch", setup.patch)
    with pytest.warns(UserWarning, match="faithfulness is undefined"):
        g = edge_circuit(flat, "eap", threshold=0.1)
    assert g.meta.faithfulness is None
