"""`mechscope attention` (alias `trace-attention`): head specs, positions, the projection check and
the report, on the zoo's induction model."""

import pytest

from mechscope.apps.cli import main
from mechscope.apps.commands.attention import parse_heads, parse_positions, report, trace_attention_cli
from mechscope.circuits.graph import Graph


def test_bad_heads_are_refused(tiny_gpt2):
    with pytest.raises(ValueError, match="L<layer>H<head>"):
        parse_heads(["layer1"], tiny_gpt2)
    assert parse_heads(["L1H3", " L0H0"], tiny_gpt2) == [(1, 3), (0, 0)]


def test_positions_are_parsed_and_checked(induction_model):
    assert parse_positions(None) is None
    assert parse_positions(["11", "-1", "3:6"]) == [11, -1, 3, 4, 5]
    assert parse_positions(["-3:"]) == [-3, -2, -1] and parse_positions(["-4:-2"]) == [-4, -3]
    for bad in ("x", "5:3", "4:", "-2:3"):
        with pytest.raises(ValueError, match="--positions"):
            parse_positions([bad])
    with pytest.raises(ValueError, match=r"prompt 2 has 5 tokens .*valid 0..4"):
        trace_attention_cli(induction_model, ["abcdefgh", "abcd"], ["L1H0"], positions=[6])


def test_trace_attention_cli(induction_model):
    from mechscope.interp import zoo

    model, ind = induction_model, tuple(zoo.card("attn-only-induction")["induction_head"])
    text = "abcdefghij" * 2
    g = trace_attention_cli(model, [text, " "], [f"L{ind[0]}H{ind[1]}"], max_depth=1, positions=[-1, -2])
    assert g.meta.prompts == (text,) and f"L{ind[0]}.H{ind[1]}" in g.nodes
    assert g.meta.parameters["positions"] == [19, 20]  # BOS + 20 characters
    text = report(g)
    assert "projection check over" in text and "ok" in text and "\n  k  L0.H0 +" in text


def test_the_projection_check_stops_the_command(tokens):
    from mechscope.interp.models import Model

    cfg = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=100, attn_only=True,
               normalization_type="LN", attn_scores_soft_cap=1.0)
    model = Model.from_config(cfg, name="soft-capped", seed=0)
    model.to_tokens = lambda text: tokens[:1]  # noqa: E731 - no tokenizer: the prompt is these ids
    with pytest.raises(ValueError, match="projection check failed at L1H0 .*tolerance 0.001"):
        trace_attention_cli(model, ["x"], ["L1H0"], firing_threshold=0.05, max_depth=1)
    g = trace_attention_cli(model, ["x"], ["L1H0"], firing_threshold=0.05, max_depth=1, tolerance=10.0)
    assert g.nodes  # a looser tolerance accepts it


def test_attention_command_writes_the_graph_and_reports(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abcdefgabcdefg\nxyz12xyz12\n")
    out = tmp_path / "svd.json"
    assert main(["attention", "--model", "attn-only-induction", "--prompts", str(prompts), "--heads", "L1H0",
                 "--positions=-3:", "--max-depth", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "projection check over" in text and "L1.H0 (" in text and "traced in" in text
    g = Graph.load(out)
    assert g.meta.details["check"]["n_firings"] > 0 and set(g.meta.details["units"]) == {"q", "k", "v"}
    assert all(set(cw) == {"q", "k", "v"} for cw in g.meta.details["channels"].values())
    assert main(["attention", "--model", "attn-only-induction", "--prompts", str(prompts), "--heads", "L1H0",
                 "--positions", "40", "--out", str(out)]) == 2
    assert "valid 0..14" in capsys.readouterr().err
