"""`mechscope edges` from files."""

import json

import pytest
import torch

from mechscope.apps.commands.edges import edges_cli
from mechscope.circuits.graph import Graph


def test_edges_cli_from_files(tmp_path, induction_model):
    recs = [{"prompt": "abcabc", "patch": "abdabd", "target": "c", "foil": "d"},
            {"prompt": "xyzxyz", "patch": "xywxyw", "target": "z", "foil": "w"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    out = tmp_path / "edges.json"
    g = edges_cli(induction_model, tmp_path / "pairs.jsonl", out, metric="jsonl", steps=4, top_n=6)
    back = Graph.load(out)
    assert back.edges == g.edges and 0 < len(g.edges) <= 6
    assert g.meta.method == "edges/eap-ig" and g.meta.parameters["reference"] == "patch"
    assert g.meta.faithfulness is not None and g.meta.n_prompts == 2
    assert any(n.kind == "logit" for n in g.nodes.values())


def test_edges_cli_prompts_of_two_lengths(tmp_path, induction_model):
    # grouped by length inside: scores are the prompt-weighted means of each length's scores,
    # and the metadata (n_prompts, lengths, faithfulness) covers all prompts
    from mechscope.apps.commands.metric_spec import make_metric
    from mechscope.circuits.edges import EdgeTask, edge_mask, edge_scores, masked_metrics

    recs = [{"prompt": "abcabc", "patch": "abdabd", "target": "c", "foil": "d"},
            {"prompt": "xyzwxyzw", "patch": "xyzvxyzv", "target": "w", "foil": "v"},
            {"prompt": "xyzxyz", "patch": "xywxyw", "target": "z", "foil": "w"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    out = tmp_path / "edges.json"
    g = edges_cli(induction_model, tmp_path / "pairs.jsonl", out, metric="jsonl", steps=3, top_n=6,
                  chunk=1)
    assert Graph.load(out).edges == g.edges
    assert g.meta.n_prompts == 3 and len(set(g.meta.parameters["seq_len"])) == 2

    def task(rs):
        clean = torch.cat([induction_model.to_tokens(r["prompt"]) for r in rs])
        patch = torch.cat([induction_model.to_tokens(r["patch"]) for r in rs])
        return EdgeTask(induction_model, clean, make_metric(induction_model, "jsonl", clean, rs), "patch", patch)

    short, long = task([recs[0], recs[2]]), task([recs[1]])
    want = (2 * edge_scores(short, "eap-ig", 3) + edge_scores(long, "eap-ig", 3)) / 3
    keep = edge_mask(short.graph, g)
    for (u, v), w in g.edges.items():
        chans = g.meta.details["channels"][f"{u}->{v}"]
        assert w == pytest.approx(sum(chans.values()), abs=1e-6)
    assert sum(g.edges.values()) == pytest.approx(float((want * keep).sum()), abs=1e-4)
    sets = [short.graph.upstream, torch.zeros_like(keep), keep]
    m_all, m_none, m_keep = ((2 * a + b) / 3 for a, b in zip(masked_metrics(short, sets), masked_metrics(long, sets)))
    assert g.meta.faithfulness == pytest.approx((m_keep - m_none) / (m_all - m_none), abs=1e-5)


def test_edges_cli_bad_inputs_and_undefined_faithfulness(tmp_path, induction_model):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "abcabc", "patch": "abc"}))
    with pytest.raises(ValueError, match="token for token"):
        edges_cli(induction_model, tmp_path / "p.jsonl")
    # a metric the reference cannot move: faithfulness None with a warning, the graph written
    (tmp_path / "q.jsonl").write_text(json.dumps({"prompt": "abcabc", "target": "c", "foil": "c"}))
    with pytest.warns(UserWarning, match="undefined"):
        edges_cli(induction_model, tmp_path / "q.jsonl", tmp_path / "g.json", metric="jsonl",
                  method="eap", reference="zero", top_n=3)
    assert Graph.load(tmp_path / "g.json").meta.faithfulness is None


def test_edges_is_a_subcommand():
    from mechscope.apps.cli import build_parser

    args = build_parser().parse_args(["edges", "--prompts", "p.txt", "--out", "g.json", "--top-n", "5"])
    assert args.top_n == 5 and args.method == "eap-ig"
