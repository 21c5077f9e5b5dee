"""Known-truth tests: every tracing method at its default settings against planted circuits
(`mechscope.circuits.planted`): precision and recall of the components it keeps, and sign
agreement of its edges with path patching. Documented failures are asserted as such; failures a
method should not have are strict xfails naming the method's owner work (issue 13)."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits import planted as P
from mechscope.circuits.known_truth import Row, evaluate

TASKS = ("copy", "inert", "saturated", "bidirectional", "mlp")
EXACT = ("atp", "ig", "eap", "eap-ig", "routes+causal")  # P = R = 1 and full sign agreement
_TASKS: dict[str, P.Task] = {}


def _task(name: str) -> P.Task:
    if name not in _TASKS:
        _TASKS[name] = P.task(name, n_prompts=4)
    return _TASKS[name]


def _exact(row: Row) -> None:
    assert (row.precision, row.recall) == (1.0, 1.0), row
    assert row.sign_agreement in (None, 1.0), row


@pytest.mark.parametrize(("name", "method"), [(n, m) for n in TASKS for m in EXACT
                                               if (n, m) != ("saturated", "atp")])  # a documented failure, below
def test_methods_recover_planted_circuits(name, method):
    row = evaluate(name, _task(name), method)
    _exact(row)
    if method != "routes+causal":
        assert row.sign_agreement == 1.0, row  # these methods' edges carry signs


def test_atp_fails_under_saturation():
    """Documented (attribution module doc): p(a) ~ 1, so dm/dz ~ 1e-8 at the clean run and AtP
    scores every node ~0 (none reaches the default threshold) while patching moves log p(a) by
    ~-20; integrated gradients and path patching find the circuit (test above)."""
    from mechscope.circuits.attribution import Setup, mean_node_scores

    t = _task("saturated")
    row = evaluate("saturated", t, "atp")
    assert row.recall == 0.0 and row.found == ()
    setup = Setup.build(t.model, P.sites(t.model), t.metric, t.clean, patch=t.patch)
    atp = max(float(v.abs().max()) for v in mean_node_scores(setup, "atp").values())
    ig = max(float(v.abs().max()) for v in mean_node_scores(setup, "ig").values())
    with torch.no_grad():
        real = float((t.metric(t.model(t.patch)) - t.metric(t.model(t.clean))).mean())
    assert atp < 1e-4 and ig > 1.0 and real < -10


def test_eap_magnitudes_vanish_under_saturation():
    """Documented (edges module doc): EAP's scores are first order, ~0 under saturation; its
    default threshold is relative to the largest score, so the ranking (and here P = R = 1)
    survives, but the scores explain none of the real effects."""
    from mechscope.circuits.edges import EdgeTask, edge_scores

    t = _task("saturated")
    eap = edge_scores(EdgeTask(t.model, t.clean, t.metric, "patch", t.patch), "eap")
    ig = edge_scores(EdgeTask(t.model, t.clean, t.metric, "patch", t.patch), "eap-ig")
    assert float(eap.abs().max()) < 1e-4 and float(ig.abs().max()) > 1.0


@pytest.mark.parametrize("name", TASKS)
def test_routes_recall_and_the_inert_writer_limitation(name):
    """Routes find every planted component; in the inert model they also keep the inert writer
    (the documented limitation, routes module doc), and in the MLP model the active distractor
    MLP; the causal filter (test above) removes both."""
    row = evaluate(name, _task(name), "routes")
    assert row.recall == 1.0, row
    if name == "inert":
        assert P.INERT_WRITER in row.found and row.precision < 1.0
    elif name == "mlp":
        assert "L1.mlp" in row.found and row.precision < 1.0
    else:
        assert row.precision == 1.0, row


@pytest.mark.parametrize("name", ("copy", "inert", "bidirectional"))
def test_attention_svd_value_composition(name):
    """The planted path is V-composition (L0.H1's output is read by L1.H2's values): found on the
    value channel; distractor heads (mean shares <= 0.03) stay below min_share."""
    _exact(evaluate(name, _task(name), "attention-svd"))


def test_attention_svd_planted_induction():
    """Distractor heads enter L1.H1 with mean shares 0.005-0.03 (kept by the per-firing 70% rule);
    the averaged-share threshold (min_share) drops them, the K-composition head has 0.88."""
    from mechscope.circuits import known as kn
    from mechscope.circuits.svd_trace import trace_attention
    from mechscope.circuits.verify import score_against

    model = kn.planted_induction_model()
    setup = kn.induction_setup(model, n_prompts=4, period=7)
    s = score_against(trace_attention(model, list(setup.clean), [(1, 1)]), kn.PLANTED_INDUCTION.components)
    assert s.recall == 1.0  # the K-composition head is found ...
    assert s.precision == 1.0, s.extra  # ... and nothing else


def test_planted_models_are_what_they_claim():
    """The ground truth itself, by intervention: the planted heads (and MLP) carry the effect,
    the inert writer has none, bidirectional attention reads the later position."""
    from mechscope.interp.intervene import ablate

    for name in TASKS:
        t = _task(name)
        with torch.no_grad():
            m0 = float(t.metric(t.model(t.clean)).mean())
            for c in t.known.node_ids:
                site = c.replace(".H", ".z.H") if ".H" in c else c.replace(".mlp", ".mlp_out")
                with ablate(t.model, site, "zero"):
                    assert float(t.metric(t.model(t.clean)).mean()) - m0 < -2.0, (name, c)
    from mechscope.interp.capture import capture

    t = _task("inert")  # active: it writes more than the planted head, and changes nothing
    out = capture(t.model, t.clean, ["L0.result"])
    out = next(iter(out.values()))  # [b, p, head, d_model]
    assert out[:, 1:, 3].norm(dim=-1).mean() > out[:, 1:, 1].norm(dim=-1).mean()
    with torch.no_grad():
        base = t.model(t.clean)
        with ablate(t.model, "L0.z.H3", "zero"):
            torch.testing.assert_close(t.model(t.clean), base, atol=1e-5, rtol=0)
    t = _task("bidirectional")  # the source is the last token, the metric reads position 1
    with torch.no_grad():
        patched, clean = (float(t.metric(t.model(x)).mean()) for x in (t.patch, t.clean))
    assert patched < -2.0 and clean > 2.0
