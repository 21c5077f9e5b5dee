"""A researcher's notebook cell, with no conversion step: a bare ``HookedTransformer``, an in-memory
SAELens SAE and TransformerLens hook names go through capture -> feature cards -> trace -> browser.

Oracles: the SAE's feature activations in the cards equal SAELens' own ``encode`` of the captured
activations; the traced graph's feature nodes splice the SAE exactly (faithfulness of the full
graph is 1 up to float error), and the browser writes one page per feature.
"""

from __future__ import annotations

import torch


def _saelens_sae(d_in: int, hook_name: str):
    import sae_lens as sl
    from sae_lens.saes.sae import SAEMetadata

    sae = sl.TopKSAE(sl.TopKSAEConfig(d_in=d_in, d_sae=24, k=4, metadata=SAEMetadata(hook_name=hook_name)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


def test_notebook_cell_with_a_hooked_transformer_and_a_saelens_sae(tiny_gpt2, tokens, tmp_path):
    from mechscope.apps.browser import build_feature_browser
    from mechscope.circuits.attribution import Setup, logprob
    from mechscope.circuits.feature_circuits import faithfulness, feature_circuit
    from mechscope.interp.capture import capture
    from mechscope.sae.features import compute_feature_cards

    tl, hook = tiny_gpt2.tl, "blocks.1.hook_resid_pre"   # what the user has
    sae = _saelens_sae(tl.cfg.d_model, hook)

    acts = capture(tl, tokens, [hook])
    (site, x), = acts.items()
    assert str(site) == "L1.resid_pre"
    with torch.no_grad():
        want = sae.encode(x.reshape(-1, x.shape[-1]))

    windows = iter(tokens)
    cards = compute_feature_cards(tl, sae, hook, windows, n_tokens=tokens.numel(), batch_size=4, n_neighbours=2)
    assert len(cards) == 24
    fired = (want > 0).sum(0)
    top = max(range(24), key=lambda i: float(want[:, i].max()))
    assert abs(cards[top].max_activation - float(want[:, top].max())) < 1e-5
    assert sum(int(f > 0) for f in fired) == sum(c.max_activation > 0 for c in cards)

    setup = Setup.build(tl, {hook: sae}, logprob(tokens[:, -1]), tokens[:, :-1])
    graph = feature_circuit(setup, method="ig", node_threshold=0.0)
    feats = [n for n in graph.nodes.values() if n.kind == "feature"]
    assert feats and all(n.site == "L1.resid_pre" for n in feats)
    f = faithfulness(graph, setup)
    assert abs(f.faithfulness - 1.0) < 1e-4

    index = build_feature_browser(tl, sae, hook, iter(tokens), tokens.numel(), tmp_path / "browser",
                                  batch_size=4, n_neighbours=2)
    assert index.is_file() and (tmp_path / "browser" / "cards.json").is_file()
