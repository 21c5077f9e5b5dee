"""Held-out evaluation of the dictionaries of a sweep, spliced into their model."""

from __future__ import annotations

import pytest
import torch


def test_heldout_evaluation_of_a_sweep_shares_the_clean_and_ablated_passes(tiny_gpt2, tokens):
    """R dictionaries on one site: per batch of windows one clean, one zero-ablated and R spliced
    forwards (the clean pass also feeds the reconstruction metrics), and every dictionary gets the
    numbers it gets when evaluated alone."""
    from mechscope.interp.capture import hooks_for
    from mechscope.interp.sites import Site
    from mechscope.sae.config import TopKConfig, TrainConfig
    from mechscope.sae.factory import build_dictionary
    from mechscope.sae.splice_eval import evaluate_heldout

    windows = list(torch.cat([tokens, tokens.flip(1)]))  # 6 windows -> 3 batches of 2
    dicts = [build_dictionary(TopKConfig(d_in=32, d_dict=64, k=k), TrainConfig(seed=k)) for k in (2, 4, 8)]

    def counted(ds):
        calls = []
        with hooks_for(tiny_gpt2, {Site.parse("L0.resid_pre"): lambda x: calls.append(1)}):
            out = evaluate_heldout(tiny_gpt2, ds, "L1.resid_mid", windows, batch_size=2,
                                   keep_mask=lambda t: t != tokens[0, 0])
        return out, len(calls)

    together, n3 = counted(dicts)
    alone = [counted([d]) for d in dicts]
    assert n3 == 3 * (2 + 3)  # 3 batches x (clean + zero + 3 spliced); computed per run it is 3 x 9
    assert all(n1 == 3 * (2 + 1) for _, n1 in alone)
    for shared, (single, _) in zip(together, alone):
        assert shared.spliced == single[0].spliced
        assert shared.reconstruction.to_dict() == single[0].reconstruction.to_dict()
    # the reconstruction rows are the kept tokens' activations of the clean pass
    kept = int((torch.stack(windows) != tokens[0, 0]).sum())
    assert together[0].reconstruction.n_tokens == kept < 6 * 16
    assert len({r.spliced.ce_loss_recovered for r in together}) == 3
    assert len({(r.spliced.loss_clean, r.spliced.loss_zero) for r in together}) == 1
    # oracle for the rows: `evaluate` over activations captured on their own (an early-stopped pass)
    from mechscope.interp.capture import capture
    from mechscope.sae.evaluate import evaluate

    stacked = torch.stack(windows)
    rows = capture(tiny_gpt2, stacked, ["L1.resid_mid"])[Site.parse("L1.resid_mid")].reshape(-1, 32)
    ref = evaluate(dicts[1], [rows[(stacked != tokens[0, 0]).reshape(-1)]])
    got = together[1].reconstruction
    assert got.n_tokens == ref.n_tokens and got.l0 == pytest.approx(ref.l0)
    assert got.fvu == pytest.approx(ref.fvu, rel=1e-6) and got.mse == pytest.approx(ref.mse, rel=1e-6)
