"""`mechscope routes`: text prompts -> aggregated routes graph, saved and loaded."""

import pytest
import torch

from mechscope.apps.commands.routes import routes_cli


def test_routes_cli_round_trips(tiny_gpt2, tmp_path):
    model = tiny_gpt2  # no tokenizer: map characters to ids for the duration of the test
    orig = model.to_tokens
    model.to_tokens = lambda text, prepend_bos=True: torch.tensor([[ord(ch) % 100 for ch in text]])
    try:
        g = routes_cli(model, ["hello there", "", "abcdef"], tau=0.05)
    finally:
        model.to_tokens = orig
    assert g.meta.aggregated.graphs == 2 and len(g.per_prompt) == 2
    path = g.save(tmp_path / "routes.json")
    assert type(g).load(path).to_dict() == g.to_dict()
    with pytest.raises(ValueError, match="non-empty"):
        routes_cli(model, ["  "])
