"""What the model adapter refuses instead of passing on silently: texts longer than the context
(TransformerLens truncates them without a word)."""

from __future__ import annotations

import pytest
import torch

from mechscope.interp.models import load_model


def test_a_text_longer_than_the_context_is_refused_or_cut_on_request():
    model = load_model("attn-only-induction")  # one token per character, n_ctx 128
    fits = model.to_tokens("ab" * 63)
    assert fits.shape == (1, 127)
    with pytest.raises(ValueError, match=r"text of 201 tokens \(BOS included\) is longer than the context "
                                         r"of model 'attn-only-induction' \(128 tokens\)"):
        model.to_tokens("x" * 200)
    long = "abcdefghij" * 20
    cut = model.to_tokens(long, truncate=True)
    assert cut.shape == (1, 128)
    assert torch.equal(cut, model.tl.to_tokens(long, truncate=False)[:, :128])
