"""`mechscope trace-attention`: head specs and text prompts."""

import pytest

from mechscope.apps.commands.attention import parse_heads, trace_attention_cli


def test_bad_heads_are_refused(tiny_gpt2):
    with pytest.raises(ValueError, match="L<layer>H<head>"):
        parse_heads(["layer1"], tiny_gpt2)
    assert parse_heads(["L1H3", " L0H0"], tiny_gpt2) == [(1, 3), (0, 0)]


def test_trace_attention_cli(induction_model):
    from mechscope.interp import zoo

    model, ind = induction_model, tuple(zoo.card("attn-only-induction")["induction_head"])
    text = "abcdefghij" * 2
    g = trace_attention_cli(model, [text, " "], [f"L{ind[0]}H{ind[1]}"], max_depth=1)
    assert g.meta.prompts == (text,) and f"L{ind[0]}.H{ind[1]}" in g.nodes
