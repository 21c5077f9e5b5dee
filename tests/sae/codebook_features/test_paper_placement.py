"""Codebooks where the paper puts them (every head's output and every MLP output, every layer),
and steering by forcing a state's codes at all of them, checked against constructed oracles:

* exact codes (every activation row of the prompts is a code, k = 1): the codebook model computes
  what the network computes, so its predictions are the network's;
* a model whose only path from the current state to the logits runs through one codebook whose
  codes are the states (a planted bigram machine): forcing a state's codes makes every generated
  next state a successor of it (follow rate 1);
* a codebook that carries nothing about the state (every code zero): forcing moves nothing, so
  the follow rate equals the unsteered one, which sits at the chance level. (A codebook with
  random, untrained codes is *not* such a null: the random code nearest to a state's activation
  points partly along it, and in this linear machine forcing it steers well above chance.)
"""

from __future__ import annotations

import pytest
import torch

from mechscope.interp.capture import capture, hooks_for
from mechscope.interp.models import Model
from mechscope.interp.tokfsm import TokFSM
from mechscope.sae.codebook_features import fsm as F
from mechscope.sae.codebook_features.model import PAPER_SITES, CodebookModel, CodebookSpec, expand_sites

CFG = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=20,
           act_fn="gelu_new", normalization_type="LN")


def test_paper_sites_expand_to_every_head_and_mlp_in_every_layer():
    assert expand_sites(PAPER_SITES, 3) == ["L0.z", "L0.mlp_out", "L1.z", "L1.mlp_out", "L2.z", "L2.mlp_out"]
    assert expand_sites(["L*.mlp_out", "L0.resid_pre"], 2) == ["L0.resid_pre", "L0.mlp_out", "L1.mlp_out"]
    with pytest.raises(ValueError, match="given twice"):
        expand_sites(["L*.z", "L1.z"], 2)
    with pytest.raises(ValueError, match="not supported"):
        CodebookSpec(sites=("L*.pattern",))
    cbm = CodebookModel(Model.from_config(CFG, name="tiny", seed=0),
                        CodebookSpec(sites=PAPER_SITES, head_groups=4, n_codes=8))
    names = [n for n, _ in cbm.named_bottlenecks()]
    assert names == ["L0.z", "L0.mlp_out", "L1.z", "L1.mlp_out"]
    assert [len(b.codebooks) for _, b in cbm.named_bottlenecks()] == [4, 1, 4, 1]
    assert len(cbm.dictionaries()) == 10 and "L1.z.H3" in cbm.dictionaries()


def _plant_exact_codes(cbm: CodebookModel, tokens: torch.Tensor) -> None:
    """Every activation row of ``tokens`` becomes a code, site by site in forward order (the
    activations of later sites are read with the earlier, already exact, codebooks in place)."""
    cbm.init_codebooks(tokens, kmeans_iters=1, skip_first=False)  # scales
    done = {}
    for _, b in cbm.named_bottlenecks():
        with hooks_for(cbm.model, dict(done)):
            act = capture(cbm.model, tokens, b.site)[b.site]
        rows = b._rows(act)
        for g, cb in enumerate(b.codebooks):
            x = rows[:, :, g].reshape(-1, rows.shape[-1]) * cb.scale_in
            with torch.no_grad():
                cb.W_dec.zero_()  # spare codes: zero (k-means may have left copies of some rows)
                cb.W_dec[: len(x)] = x
        done[b.site] = b


def test_exact_codes_reproduce_the_models_own_predictions():
    model = Model.from_config(CFG, name="tiny", seed=0)
    tokens = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    cbm = CodebookModel(model, CodebookSpec(sites=PAPER_SITES, head_groups=4, n_codes=16, k=1))
    _plant_exact_codes(cbm, tokens)
    with torch.no_grad():
        want = model(tokens)
        got = cbm(tokens)
    assert not torch.allclose(want, torch.zeros_like(want))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # each row selected its own code (row i of the flattened batch is code i)
    assert torch.equal(cbm.codes(tokens)["L1.mlp_out"][..., 0, 0].flatten(), torch.arange(12))
    with cbm.disabled():  # and the bypass is the network itself
        torch.testing.assert_close(cbm(tokens), want)
    # nested forcing: each block's codes at its own positions, the natural codes elsewhere
    free = cbm.codes(tokens)["L0.mlp_out"][..., 0, 0]
    with cbm.forcing({"L0.mlp_out": [3]}, positions=[1]), cbm.forcing({"L0.mlp_out": [5]}, positions=[-1]):
        both = cbm.codes(tokens)["L0.mlp_out"][..., 0, 0]
    want_codes = free.clone()
    want_codes[:, 1], want_codes[:, -1] = 3, 5
    assert torch.equal(both, want_codes)
    assert torch.equal(cbm.codes(tokens)["L0.mlp_out"][..., 0, 0], free)  # and nothing stays forced


def bigram_model(fsm: TokFSM, n_steps: int) -> Model:
    """One layer, no LayerNorm, one token per state: the MLP turns the current token s into the
    direction e_B(s) of a block B of the residual stream that only the unembedding reads, adding
    logits 5 · [t ∈ succ(s)]; the token's embedding e_A(s) adds 1 · [t ∈ succ(s)] directly;
    attention writes nothing (W_O = 0). Forcing the MLP output of state t therefore gives logits
    [t' ∈ succ(s)] + 5 [t' ∈ succ(t)], whose argmax is a successor of t."""
    S, V = fsm.n_states, fsm.d_vocab
    d = 4 * -(-(V + S) // 4)
    cfg = dict(n_layers=1, d_model=d, n_heads=4, d_head=d // 4, d_mlp=V, d_vocab=V, n_ctx=fsm.seq_len(n_steps),
               act_fn="relu", normalization_type=None)
    m = Model.from_config(cfg, name="bigram", seed=0)
    tl, b = m.module, m.module.blocks[0]
    with torch.no_grad():
        tl.embed.W_E.zero_()
        tl.embed.W_E[:, :V] = torch.eye(V)
        tl.pos_embed.W_pos.zero_()
        b.attn.W_O.zero_()
        b.attn.b_O.zero_()
        b.mlp.W_in.zero_()
        b.mlp.W_in[:V, :V] = torch.eye(V)
        b.mlp.b_in.zero_()
        b.mlp.W_out.zero_()
        b.mlp.W_out[torch.arange(S), V + torch.arange(S)] = 1.0
        b.mlp.b_out.zero_()
        tl.unembed.W_U.zero_()
        tl.unembed.W_U[V: V + S, :S] = 5.0 * fsm.adjacency().float()
        tl.unembed.W_U[:S, :S] = fsm.adjacency().float()
        tl.unembed.b_U.zero_()
    return m


@pytest.fixture(scope="module")
def machine():
    fsm, n_steps = TokFSM(n_states=12, out_degree=3, base=12, seed=0), 6  # one digit per state
    return fsm, n_steps, bigram_model(fsm, n_steps)


def _state_carrying_codebooks(fsm: TokFSM, n_steps: int, model: Model) -> CodebookModel:
    cbm = CodebookModel(model, CodebookSpec(sites=PAPER_SITES, head_groups=4, n_codes=16, k=1))
    cbm.init_codebooks(fsm.sample(16, n_steps, torch.Generator().manual_seed(1)).tokens)
    cb = cbm.bottleneck("L0.mlp_out").codebooks[0]
    V, S = fsm.d_vocab, fsm.n_states
    with torch.no_grad():  # code s = the MLP's output in state s, exactly
        cb.W_dec.zero_()  # (k-means left duplicates of some states among the spare codes)
        cb.W_dec[torch.arange(S), V + torch.arange(S)] = float(cb.scale_in)
    return cbm


def test_forcing_codes_that_carry_the_state_gives_follow_rate_one(machine):
    fsm, n_steps, model = machine
    cbm = _state_carrying_codebooks(fsm, n_steps, model)
    assert F.transition_report(cbm, fsm, n_steps, 32).valid_mass > 0.95  # the machine itself is right
    codes = F.state_codes(cbm, fsm, 64, n_steps)
    assert torch.equal(codes["L0.mlp_out"][:, 0, 0], torch.arange(fsm.n_states))  # the planted codes
    assert set(codes) == {"L0.z", "L0.mlp_out"} and codes["L0.z"].shape == (fsm.n_states, 4, 1)
    rep = F.steering_report(cbm, fsm, codes, n_steps, prompts_per_state=4)
    assert rep.n_codebooks == 5 and rep.n_prompts == 48
    assert rep.follow_rate == 1.0
    assert rep.target_mass > 0.95 and rep.original_mass < rep.original_mass_unsteered
    assert rep.js_target < 0.1 < rep.js_target_unsteered


def test_forcing_codes_that_carry_nothing_stays_at_chance(machine):
    """Every code zero: selection cannot depend on the state, the forced output is the unforced
    one, and the next state (a successor of the prompt's own state, through the direct path) is
    unrelated to the randomly drawn target."""
    fsm, n_steps, model = machine
    cbm = _state_carrying_codebooks(fsm, n_steps, model)
    for _, b in cbm.named_bottlenecks():
        for cb in b.codebooks:
            with torch.no_grad():
                cb.W_dec.zero_()
    rep = F.steering_report(cbm, fsm, F.state_codes(cbm, fsm, 64, n_steps), n_steps, prompts_per_state=8)
    assert rep.follow_rate == rep.follow_rate_unsteered
    assert rep.target_mass == pytest.approx(rep.target_mass_unsteered)
    n, p = rep.n_prompts, rep.chance  # the unforced next state is unrelated to the random target
    assert abs(rep.follow_rate - p) < 3 * (p * (1 - p) / n) ** 0.5
