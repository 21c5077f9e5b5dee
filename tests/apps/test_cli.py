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
    assert main(["features", result["sae_dir"], "--out", str(tmp_path / "fb"), "--tokens", "512", "--n-ctx", "32"]) == 0
    assert (tmp_path / "fb" / "index.html").exists() and (tmp_path / "fb" / "cards.json").exists()


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


@pytest.mark.parametrize("which", ["capture"])
def test_bench_quick(which, capsys):
    assert main(["bench", which, "--quick"]) == 0
    assert "ratio" in capsys.readouterr().out
