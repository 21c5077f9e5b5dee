"""Steering by codes: detector statistics, finding codes, forced generation, and the TokFSM run.

The FSM run is the tiny version of the paper's experiment (see `mechscope.sae.codebook_features.fsm`,
"Reference levels"): 12 states, 2 out-edges, base 4 (2 digits per state), a 2-layer d_model 32
model pre-trained 200 steps, codebooks (32 codes, k = 1) on both MLP outputs fine-tuned 60 steps.
Documented level, asserted with margin: best-code precision ≥ 0.35 and recall ≥ 0.4 per state on
average (chance precision 1/12 ≈ 0.08); valid next-state mass ≥ 0.8 (chance 2/12); forcing a
state's codes raises the mass on its successors and lowers the mass on the original state's.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mechscope.sae.codebook_features.model import CodebookModel, CodebookSpec
from mechscope.interp.models import Model
from mechscope.sae.codebook_features.steer import detector_stats, find_codes, generate, regex_mask, token_mask

CFG = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50,
           act_fn="gelu_new", normalization_type="LN")


def test_detector_stats_match_counting():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 7, (200, 2), generator=g)
    labels = torch.randint(-1, 4, (200,), generator=g)
    st = detector_stats(codes, labels, 7, 4)
    for c in range(7):
        fires = [(c in codes[i].tolist()) for i in range(200)]
        for lab in range(4):
            both = sum(f and int(labels[i]) == lab for i, f in enumerate(fires))
            assert st.precision[c, lab] == pytest.approx(both / max(sum(fires), 1))
            assert st.recall[c, lab] == pytest.approx(both / max(int((labels == lab).sum()), 1))
        assert st.fires[c] == sum(fires)
    with pytest.raises(ValueError, match=r"code indices must be in \[0, 3\)"):
        detector_stats(codes, labels, 3, 4)


def test_masks():
    toks = [["a", "bc", "d", "cd"], ["x", "cd"]]
    m = regex_mask(toks, "cd")
    assert m.tolist() == [[False, False, True, True], [False, True, False, False]]
    assert token_mask(torch.tensor([[1, 2, 3, 2]]), [2]).tolist() == [[False, True, False, True]]
    with pytest.raises(ValueError, match="invalid regex"):
        regex_mask(toks, "(")


@pytest.fixture(scope="module")
def token_codebook():
    """No positional embedding and codes = token embeddings at L0.resid_pre: code j fires
    exactly on token j (a planted ground truth)."""
    m = Model.from_config(CFG, name="tiny", seed=0)
    with torch.no_grad():
        m.W_pos.zero_()
    cbm = CodebookModel(m, CodebookSpec(sites=("L0.resid_pre",), n_codes=50, k=1))
    tokens = torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(0))
    cbm.init_codebooks(tokens)
    cb = cbm.bottleneck("L0.resid_pre").codebooks[0]
    with torch.no_grad():
        cb.W_dec.copy_(m.W_E * cb.scale_in)
    return cbm, tokens


def test_find_codes_recovers_the_planted_token_code(token_codebook):
    cbm, tokens = token_codebook
    target = token_mask(tokens, [7])
    best = find_codes(cbm, tokens, target, top=3)
    assert (best[0].site, best[0].code, best[0].precision, best[0].recall) == ("L0.resid_pre", 7, 1.0, 1.0)
    with pytest.raises(ValueError, match="occurs nowhere"):
        find_codes(cbm, tokens, torch.zeros_like(target))


def test_generate_with_forced_code_equals_model_on_that_token(token_codebook):
    cbm, _ = token_codebook
    prompt = torch.tensor([[3, 9, 4, 11]])
    free = generate(cbm, prompt, 3)
    manual = prompt
    for _ in range(3):  # oracle for greedy decoding: the exact codebook is the identity
        manual = torch.cat([manual, cbm.network(manual)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(free, manual)
    # forcing code 7 everywhere makes every position read as token 7
    forced = generate(cbm, prompt, 3, force={"L0.resid_pre": [7]}, force_generated=True)
    for i in range(3):
        n = prompt.shape[1] + i
        want = cbm.network(torch.full((1, n), 7))[:, -1].argmax(-1)
        assert forced[0, n] == want
    assert torch.equal(forced[:, :4], prompt)


# -- the small TokFSM run ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsm_run():
    from mechscope.sae.codebook_features.fsm import fsm_model, fsm_sampler
    from mechscope.interp.lm_train import LMTrainConfig, train_lm
    from mechscope.sae.codebook_features.train import finetune
    from mechscope.interp.tokfsm import TokFSM

    fsm, n_steps = TokFSM(n_states=12, out_degree=2, base=4, seed=0), 8
    model = fsm_model(fsm, n_steps, n_layers=2, d_model=32, n_heads=4, d_mlp=128, seed=0)
    train_lm(model, fsm_sampler(fsm, 32, n_steps), LMTrainConfig(steps=200, lr=5e-3, warmup_steps=10))
    base = copy.deepcopy(model)
    cbm = CodebookModel(model, CodebookSpec(sites=("L0.mlp_out", "L1.mlp_out"), n_codes=32, k=1))
    cbm.init_codebooks(fsm.sample(32, n_steps, torch.Generator().manual_seed(5)).tokens)
    log = finetune(cbm, fsm_sampler(fsm, 32, n_steps), LMTrainConfig(steps=60, lr=1e-3, warmup_steps=5, seed=1)).rows
    return fsm, n_steps, base, cbm, log


def test_small_fsm_run_identifies_states(fsm_run):
    from mechscope.sae.codebook_features.fsm import best_site, state_identification, transition_report
    from mechscope.sae.codebook_features.train import loss_increase

    fsm, n_steps, base, cbm, log = fsm_run
    assert log[-1]["step"] == 59 and all(r["aux_loss"] > 0 for r in log)
    tr = transition_report(cbm, fsm, n_steps, n_prompts=64)
    assert tr.valid_mass > 0.8 > tr.chance_valid_mass
    ids = state_identification(cbm, fsm, 64, n_steps)
    best = best_site(ids)
    assert best.chance_precision == pytest.approx(1 / 12, abs=0.01)
    assert best.mean_precision() > 0.35 and best.mean_recall() > 0.4
    rep = loss_increase(base, cbm, fsm.sample(32, n_steps, torch.Generator().manual_seed(9)).tokens)
    assert rep.increase == pytest.approx(rep.codebook - rep.base)
    assert rep.bypassed != rep.codebook


def test_forcing_a_state_code_steers_the_next_state(fsm_run):
    from mechscope.sae.codebook_features.fsm import state_identification, steering_report

    fsm, n_steps, _, cbm, _ = fsm_run
    ids = state_identification(cbm, fsm, 64, n_steps)
    rep = steering_report(cbm, fsm, list(ids.values()), n_steps, prompts_per_state=4)
    assert rep.target_mass > rep.target_mass_unsteered + 0.05
    assert rep.original_mass < rep.original_mass_unsteered - 0.05
    assert rep.follow_rate > rep.chance
