"""Fixtures for the app tests: feature cards from a tiny model whose vocabulary holds HTML/JS
injection strings, a small graph, and a headless Chromium (tests skip when it is absent)."""

from __future__ import annotations

import pytest
import torch

from .helpers import NASTY, TinySAE, nasty_tokenizer


@pytest.fixture(scope="session")
def nasty_model(tmp_path_factory):
    from mechscope.interp.models import Model

    tok = nasty_tokenizer(tmp_path_factory.mktemp("tok"))
    cfg = dict(n_layers=1, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_mlp=32, d_vocab=len(tok),
               act_fn="gelu_new", normalization_type="LN")
    return Model.from_config(cfg, tokenizer=tok, name="tiny-nasty", seed=0)


@pytest.fixture(scope="session")
def nasty_cards(nasty_model):
    """40 feature cards (some dead) whose contexts and logits include the injection tokens."""
    from mechscope.sae.features import compute_feature_cards

    tok = nasty_model.tokenizer
    ids = tok.convert_tokens_to_ids(list(NASTY))
    g = torch.Generator().manual_seed(0)
    windows = []
    for _ in range(8):
        w = torch.randint(0, len(tok), (16,), generator=g)
        w[3], w[9] = ids
        windows.append(w)
    sae = TinySAE(16, 40, seed=0, bias=-0.1)
    sae.b_enc[-3:] = -100.0  # three dead features
    # make the injection tokens the strongest logit effects of feature 0
    with torch.no_grad():
        nasty_model.tl.W_U[:, ids] *= 4
    sae.W_dec[0] = nasty_model.tl.W_U[:, ids[0]] + nasty_model.tl.W_U[:, ids[1]]
    # and feature 1 promote a byte token (E2, the first byte of "—"), which decodes to U+FFFD alone
    byte = tok.convert_tokens_to_ids("\u00e2")  # GPT-2's byte-level stand-in for 0xE2
    sae.W_dec[1] = 3 * nasty_model.tl.W_U[:, byte]
    return compute_feature_cards(nasty_model, sae, "L0.resid_post", windows, n_tokens=128, n_top=4,
                                 n_samples=4, left=6, right=2, n_logits=5, dictionary_name="nasty-sae")


@pytest.fixture(scope="session")
def chrome(tmp_path_factory):
    from .chrome import Chrome, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    browser = Chrome(str(tmp_path_factory.mktemp("chrome-profile")))
    yield browser
    browser.close()
