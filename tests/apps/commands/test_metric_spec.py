"""``--metric`` / ``--position`` specs: each spec gives the metric of `circuits.metrics` it names."""

import json

import pytest
import torch

from mechscope.apps.commands.metric_spec import make_metric, parse_position, token_id
from mechscope.circuits import metrics as M


def test_parse_position():
    assert parse_position(None) == -1 and parse_position("3") == 3 and parse_position("-2") == -2
    assert parse_position("2,5") == [2, 5] and parse_position(" all ") == "all"
    with pytest.raises(ValueError, match="comma list"):
        parse_position("last")


def test_specs_equal_the_metrics_they_name(induction_model, tmp_path):
    m = induction_model
    toks = torch.cat([m.to_tokens("abcabc"), m.to_tokens("xyzxyz")])
    logits = torch.randn(2, toks.shape[1], m.d_vocab, generator=torch.Generator().manual_seed(0))
    c, d = token_id(m, "c"), token_id(m, "d")
    recs = [{"prompt": "abcabc"}, {"prompt": "xyzxyz"}]
    check = lambda spec, want, position=None, rs=recs: torch.testing.assert_close(  # noqa: E731
        make_metric(m, spec, toks, rs, position)(logits), want(logits))
    check("logprob:c", M.logprob(c, "all"), "all")
    check("logit_diff:c,d", M.logit_diff(c, d, [1, 2]), "1,2")
    check("prob:c,d", M.prob_mass([c, d]))
    check("next_token", lambda x: x[:, 2].log_softmax(-1)[torch.arange(2), toks[:, 3]], "2")
    check("next_token", M.next_token_logprob(toks))
    one, two = token_id(m, "1"), token_id(m, "2")
    check(f"expected:1,#{two}=2", M.expected_value([one, two], [1.0, 2.0]))
    pos = [dict(r, target="c", position=p) for r, p in zip(recs, (2, 4))]
    check("jsonl", M.logprob(torch.tensor([c, c]), torch.tensor([2, 4])), rs=pos)
    (tmp_path / "mine.py").write_text("def metric(logits):\n    return logits[:, -1, 5] - logits[:, 0, 5]\n")
    check(f"py:{tmp_path / 'mine.py'}:metric", lambda x: x[:, -1, 5] - x[:, 0, 5])
    with pytest.raises(ValueError, match="no numerical value"):
        make_metric(m, "expected:c", toks, recs)
    with pytest.raises(ValueError, match="defines no function"):
        make_metric(m, f"py:{tmp_path / 'mine.py'}:other", toks, recs)
    with pytest.raises(ValueError, match="every prompt record has a 'position'"):
        make_metric(m, "logprob:c", toks, [pos[0], recs[1]])


def test_trace_and_edges_read_position_and_user_metric(induction_model, tmp_path):
    from mechscope.apps.commands.edges import edges_cli
    from mechscope.apps.commands.trace import trace_cli

    recs = [{"prompt": "abcabc", "target": "c", "position": 2}, {"prompt": "xyzxyzxyz", "target": "z", "position": 5}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    g = trace_cli(induction_model, tmp_path / "p.jsonl", sites=["L1.z"], metric="jsonl", node_threshold=0.0)
    assert g.meta.parameters["metric"] == "logprob" and g.meta.n_prompts == 2
    (tmp_path / "mine.py").write_text("def mean_logit(logits):\n    return logits.mean((1, 2))\n")
    (tmp_path / "t.txt").write_text("abcabc\nqwerqw\n")
    e = edges_cli(induction_model, tmp_path / "t.txt", metric=f"py:{tmp_path / 'mine.py'}:mean_logit",
                  method="eap", reference="mean", position="all")
    assert e.meta.parameters["metric"] == "mean_logit"
