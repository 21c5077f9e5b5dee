"""`mechscope trace` from files: dictionaries folders, prompt files, metrics."""

import json

import pytest

from mechscope.apps.commands.trace import trace_cli
from mechscope.circuits.graph import Graph


def test_trace_cli_from_files(tmp_path, induction_model):
    from mechscope.sae.config import TopKConfig
    from mechscope.sae.factory import build_dictionary
    from mechscope.sae.io import save_dictionary

    sae = build_dictionary(TopKConfig(d_in=64, d_dict=32, k=4, site_in="L0.attn_out"))
    save_dictionary(sae, tmp_path / "dicts" / "L0.attn_out")
    (tmp_path / "prompts.txt").write_text("abcdefabcdef\nqwerty qwerty\n")
    out = tmp_path / "graph.json"
    g = trace_cli(induction_model, tmp_path / "prompts.txt", out, dictionaries=tmp_path / "dicts",
                  sites=["L1.z"], metric="next_token", node_threshold=0.0, edge_threshold=None)
    back = Graph.load(out)
    assert back.nodes == g.nodes and len(g.edges) > 0
    # two prompts of different token lengths: one graph over both (issue 13), not two averaged
    assert g.meta.n_prompts == 2 and len(set(map(len, g.meta.prompt_tokens))) == 2
    assert g.meta.aggregated is None and g.meta.faithfulness is not None
    kinds = {n.kind for n in g.nodes.values()}
    assert {"feature", "error", "head", "logit"} <= kinds
    assert g.meta.parameters["dictionaries"]["L0.attn_out"].startswith("TopKSAE")

    recs = [{"prompt": "abcabc", "patch": "abdabd", "target": "c", "foil": "d"},
            {"prompt": "xyzxyz", "patch": "xywxyw", "target": "z", "foil": "w"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    g2 = trace_cli(induction_model, tmp_path / "pairs.jsonl", sites=["L0.z", "L1.z"], metric="jsonl",
                   node_threshold=0.0)
    assert g2.meta.parameters["ablation"] == "patch"
    assert g2.meta.parameters["metric"] == "logit_diff"


def test_trace_cli_bad_inputs(tmp_path, induction_model):
    (tmp_path / "p.txt").write_text("abcabc\n")
    (tmp_path / "dicts" / "resid").mkdir(parents=True)
    with pytest.raises(ValueError, match="named by their site"):
        trace_cli(induction_model, tmp_path / "p.txt", dictionaries=tmp_path / "dicts")
    with pytest.raises(ValueError, match="unknown metric"):
        trace_cli(induction_model, tmp_path / "p.txt", sites=["L0.z"], metric="kl")
    with pytest.raises(ValueError, match="one token"):
        trace_cli(induction_model, tmp_path / "p.txt", sites=["L0.z"], metric="logprob:abc")
