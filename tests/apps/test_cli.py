"""The mechscope command line, end to end on the zoo models (in-process, small inputs)."""

from __future__ import annotations

import json

import pytest

from mechscope.apps.cli import main
from mechscope.circuits.graph import Graph


def test_demo_quick_writes_sae_metrics_and_browser(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["browser"] in out and result["sae_dir"] in out
    assert (tmp_path / "browser" / "index.html").exists()
    assert result["eval_l0"] <= 8 + 1e-6 and 0 < result["eval_fvu"] < 1.5
    from mechscope.sae.io import load_dictionary, load_sae_lens

    ours = load_dictionary(result["sae_dir"])
    theirs = load_sae_lens(result["sae_dir"])  # SAELens reads the folder the demo wrote
    assert theirs.cfg.d_sae == ours.d_dict
    # the browser again from the saved folder, its site read from the folder's metadata
    from mechscope.circuits.graph import GraphMeta, Node

    g = Graph(meta=GraphMeta("sparse_feature_circuit/atp", "metric", "gpt2-shakespeare", 4, 1, ("ab",), (("a", "b"),)))
    g.add_edge(g.add_node(Node("feature", 2, 1, index=3, site="L2.resid_pre", score=1.0)),
               g.add_node(Node("logit", 4, 1)), 1.0)
    g.save(tmp_path / "graphs" / "g.json")
    assert main(["features", result["sae_dir"], "--out", str(tmp_path / "fb"), "--tokens", "512", "--n-ctx", "32",
                 "--graphs", str(tmp_path / "graphs")]) == 0
    assert (tmp_path / "fb" / "index.html").exists() and (tmp_path / "fb" / "cards.json").exists()
    assert "graphs containing these features: 1" in capsys.readouterr().out
    index = json.loads((tmp_path / "fb" / "graphs.json").read_text())
    assert index["graphs"]["../graphs/g.html"]["features"] == {"3": [["L2.resid_pre.f3@1", 1.0]]}
    assert "../fb/index.html#f3" in (tmp_path / "graphs" / "g.html").read_text()  # the page written links back


def test_zoo_list_and_errors(capsys):
    assert main(["zoo", "list"]) == 0
    assert "gpt2-shakespeare (default)" in capsys.readouterr().out
    assert main(["zoo", "show", "no-such-model"]) == 2
    assert "zoo names" in capsys.readouterr().err


def test_train_rejects_bad_config_before_work(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[sae]\narchitecture = "dense"\nd_dict = 8\nsite_in = "L0.resid_post"\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "architecture" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_routes_and_trace_attention_write_graphs(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abcdefgabcdef\nxyz12xyz1\n")
    out = tmp_path / "routes.json"
    assert main(["routes", "--model", "attn-only-induction", "--prompts", str(prompts), "--out", str(out), "--html"]) == 0
    g = Graph.load(out)
    assert g.nodes and g.meta.method
    assert out.with_suffix(".html").exists()
    out = tmp_path / "svd.json"
    assert main(["trace-attention", "--model", "attn-only-induction", "--prompts", str(prompts),
                 "--heads", "L1H0", "--out", str(out)]) == 0
    assert Graph.load(out).nodes


def test_pages_written_by_the_cli_carry_head_details(tmp_path):
    """Every method's page with head nodes gets its heads' panels (apps/head_details.py):
    patterns on each prompt, top tokens for each head node; each prompt's route its own."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abcdefgabcdef\nxyz12xyz1\n")
    lengths = [14, 10]  # BOS + characters: the zoo model tokenises characters
    for cmd, more in (("routes", []), ("trace-attention", ["--heads", "L1H0"]),
                      ("trace", ["--sites", "L0.z", "L1.z", "--node-threshold", "0.01"])):
        out = tmp_path / f"{cmd}.json"
        assert main([cmd, "--model", "attn-only-induction", "--prompts", str(prompts), "--out", str(out), "--html",
                     *more]) == 0
        g = Graph.load(out)
        heads = g.meta.details["heads"]
        ids = {n.id for n in g.nodes.values() if n.kind == "head"}
        assert ids and set(heads["top_tokens"]) == ids, cmd
        assert {len(p) for v in heads["attention"].values() for p in v} == set(lengths), cmd  # each prompt's pattern
        for sub in g.per_prompt:  # each prompt's route: its own head nodes' tokens
            assert set(sub.meta.details["heads"]["top_tokens"]) == {n.id for n in sub.nodes.values() if n.kind == "head"}
    edges = tmp_path / "edges.txt"
    edges.write_text("abcdefgabcdef\nhijklmnhijklm\n")
    out = tmp_path / "edges.json"
    assert main(["edges", "--model", "attn-only-induction", "--prompts", str(edges), "--out", str(out), "--html",
                 "--method", "eap", "--top-n", "20"]) == 0
    g = Graph.load(out)
    assert set(g.meta.details["heads"]["top_tokens"]) == {n.id for n in g.nodes.values() if n.kind == "head"} != set()


@pytest.mark.parametrize("which", ["capture"])
def test_bench_quick(which, capsys):
    assert main(["bench", which, "--quick"]) == 0
    assert "ratio" in capsys.readouterr().out
