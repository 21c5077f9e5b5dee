"""`mechscope edges` from files."""

import json

import pytest

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


def test_edges_cli_bad_inputs(tmp_path, induction_model):
    (tmp_path / "p.txt").write_text("abcabc\nab\n")
    with pytest.raises(ValueError, match="one length per call"):
        edges_cli(induction_model, tmp_path / "p.txt")


def test_edges_is_a_subcommand():
    from mechscope.apps.cli import build_parser

    args = build_parser().parse_args(["edges", "--prompts", "p.txt", "--out", "g.json", "--top-n", "5"])
    assert args.top_n == 5 and args.method == "eap-ig"
