"""Edge-level circuits in chunks and over prompts of several lengths: chunked scores, metrics and
faithfulness equal the unchunked computation; several lengths give the prompt-weighted
combination of the per-length computations."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.attribution import logit_diff
from mechscope.circuits.edges import (EdgeTask, edge_circuit, edge_mask, edge_scores, faithfulness,
                                      masked_metrics, pieces, tasks)

from .helpers import toks


def _task(model, n, p, reference, seed=0):
    clean = toks(n, p, vocab=100, seed=seed)
    metric = logit_diff(torch.arange(1, n + 1), torch.arange(10, 10 + n))
    patch = toks(n, p, vocab=100, seed=seed + 7) if reference == "patch" else None
    return EdgeTask(model, clean, metric, reference, patch)


@pytest.mark.parametrize("reference", ["patch", "mean", "zero"])
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_chunked_edge_scores_equal_the_batch(tiny_gpt2, reference, method):
    task = _task(tiny_gpt2, 5, 7, reference)
    whole = edge_scores(task, method, steps=4)
    assert whole.abs().max() > 1e-3
    for chunk, step_chunk in ((2, None), (1, 3), (5, 1), (3, 4)):
        got = edge_scores(task, method, steps=4, chunk=chunk, step_chunk=step_chunk)
        torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reference", ["patch", "mean"])
def test_chunked_masked_metrics_and_faithfulness_equal_the_batch(tiny_gpt2, reference):
    task = _task(tiny_gpt2, 5, 7, reference)
    g = task.graph
    keep = edge_scores(task, "eap").abs() > 0.02
    sets = [g.upstream, torch.zeros_like(g.upstream), keep]
    whole = masked_metrics(task, sets)
    for chunk in (1, 2, 4):
        assert masked_metrics(task, sets, chunk) == pytest.approx(whole, abs=1e-5)
        assert faithfulness(task, keep, chunk) == pytest.approx(faithfulness(task, keep), abs=1e-5)
    # a chunk of the mean reference is the whole batch's mean, not its own
    sub, _ = next(pieces(task, 2))
    if reference == "mean":
        torch.testing.assert_close(sub.mean, tasks(task)[0].mean)


def test_two_lengths_are_the_weighted_combination_of_each(tiny_gpt2):
    # patch reference: each length's problem is self-contained, so the combined scores and
    # metrics are the prompt-weighted means of the per-length ones
    a, b = _task(tiny_gpt2, 3, 6, "patch", seed=0), _task(tiny_gpt2, 2, 9, "patch", seed=1)
    for method in ("eap", "eap-ig"):
        both = edge_scores([a, b], method, steps=3, chunk=2)
        want = 0.6 * edge_scores(a, method, steps=3) + 0.4 * edge_scores(b, method, steps=3)
        torch.testing.assert_close(both, want, atol=1e-5, rtol=1e-4)
    graph = edge_circuit([a, b], "eap-ig", steps=3, top_n=8, chunk=2)
    assert graph.meta.n_prompts == 5 and len(graph.meta.prompts) == 5
    assert graph.meta.parameters["seq_len"] == [6, 9]
    keep = edge_mask(a.graph, graph)
    sets = [a.graph.upstream, torch.zeros_like(keep), keep]
    ma, mb = masked_metrics(a, sets), masked_metrics(b, sets)
    m_all, m_none, m_keep = (0.6 * x + 0.4 * y for x, y in zip(ma, mb))
    assert graph.meta.faithfulness == pytest.approx((m_keep - m_none) / (m_all - m_none), abs=1e-5)


def test_mean_reference_is_pooled_over_every_length(tiny_gpt2):
    from mechscope.circuits.edges import sender_outputs

    a, b = _task(tiny_gpt2, 3, 6, "mean", seed=0), _task(tiny_gpt2, 2, 9, "mean", seed=1)
    rows = torch.cat([sender_outputs(t, t.clean).flatten(0, 1) for t in (a, b)])
    for t in tasks([a, b]):
        torch.testing.assert_close(t.mean[0, 0], rows.mean(0), atol=1e-5, rtol=1e-5)


def test_undefined_faithfulness_is_none_with_a_warning(tiny_gpt2):
    flat = logit_diff(torch.tensor([3, 3]), torch.tensor([3, 3]))  # always 0
    task = EdgeTask(tiny_gpt2, toks(2, 5, vocab=100), flat, "zero")
    with pytest.warns(UserWarning, match="undefined"):
        graph = edge_circuit(task, "eap", top_n=3)
    assert graph.meta.faithfulness is None


def test_tasks_must_share_model_and_reference(tiny_gpt2):
    with pytest.raises(ValueError, match="share"):
        tasks([_task(tiny_gpt2, 2, 5, "zero"), _task(tiny_gpt2, 2, 6, "mean")])
    with pytest.raises(ValueError, match="chunk size"):
        next(pieces(_task(tiny_gpt2, 2, 5, "zero"), 0))
    no_select = EdgeTask(tiny_gpt2, toks(2, 5, vocab=100), lambda lg: lg[:, -1, 0], "zero")
    with pytest.raises(ValueError, match="select"):
        edge_scores(no_select, "eap", chunk=1)
