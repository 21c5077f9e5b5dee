"""Fluent dreaming (EPO): planted bigram targets, brute force, the frontier, reproducibility."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mechscope.circuits.dream import DreamConfig, dream
from mechscope.circuits.dream_result import DreamResult
from mechscope.circuits.dream_targets import Target
from mechscope.interp.capture import capture
from mechscope.interp.models import Model
from mechscope.kernels.code import SparseCode

A, B = 5, 11  # the planted bigram: token A followed by token B


def planted_bigram_model(vocab: int = 16, ctx: int = 8, seed: int = 0, first: int = A,
                         second: int = B) -> Model:
    """One layer, no LayerNorm. Residual = tokens | positions | stash. Head 0 copies the previous
    token into the stash (positional query e_p against key e_{q+1}; position 0 sees itself);
    MLP neuron 0 has pre-activation ``2 [token = B] + 2 [stash = A] - 3`` (A, B = ``first``,
    ``second``), so after the ReLU it is 1 exactly where the bigram (A, B) ends and 0 elsewhere. The unembedding is a random bigram
    language model in which B after A is improbable (fluency and the target disagree)."""
    d = 2 * vocab + ctx
    cfg = dict(n_layers=1, d_model=d, d_head=max(vocab, ctx), n_heads=1, d_mlp=4, n_ctx=ctx,
               d_vocab=vocab, act_fn="relu", normalization_type=None, positional_embedding_type="standard")
    model = Model.from_config(cfg, name="planted-bigram", seed=seed)
    tl, s = model.tl, 10.0
    tok, pos, stash = slice(0, vocab), slice(vocab, vocab + ctx), slice(vocab + ctx, d)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tl.parameters():
            p.zero_()
        tl.W_E[:, tok] = torch.eye(vocab)
        tl.W_pos[:, pos] = torch.eye(ctx)
        a = tl.blocks[0].attn
        a.W_Q[0, pos, :ctx] = s * torch.eye(ctx)
        a.W_K[0, pos, :ctx] = s * torch.eye(ctx).roll(1, dims=1)  # key of q reads e_{q+1}
        a.W_K[0, vocab + ctx - 1] = 0
        a.W_V[0, tok, :vocab] = torch.eye(vocab)
        a.W_O[0, :vocab, stash] = torch.eye(vocab)
        m = tl.blocks[0].mlp
        m.W_in[second, 0], m.W_in[vocab + ctx + first, 0], m.b_in[0] = 2.0, 2.0, -3.0
        m.b_in[1:] = -1.0
        bigram = torch.randn(vocab, vocab, generator=g)
        bigram[first, second] = -6.0
        tl.W_U[tok] = 2 * bigram
    return model


class PlantedDict:
    """A ReLU dictionary on L0.resid_post whose feature 3 reads token B and stash A."""

    def __init__(self, model: Model, vocab: int = 16, ctx: int = 8) -> None:
        d, self.d_dict = model.d_model, 6
        self.d_in = d
        g = torch.Generator().manual_seed(3)
        self.W_enc = torch.randn(self.d_dict, d, generator=g) * 0.1
        self.b_enc = torch.full((self.d_dict,), -5.0)
        self.W_enc[3] = 0
        self.W_enc[3, B], self.W_enc[3, vocab + ctx + A], self.b_enc[3] = 2.0, 2.0, -3.0
        self.W_dec = torch.randn(self.d_dict, d, generator=g)

    def encode(self, x):
        pre = (x @ self.W_enc.T + self.b_enc).relu()
        return SparseCode(pre, torch.arange(self.d_dict).expand_as(pre))

    def decode(self, code):
        return code.dense(self.d_dict) @ self.W_dec

    @property
    def directions(self):
        return self.W_dec


def has_bigram(tokens) -> bool:
    return any(x == A and y == B for x, y in zip(tokens, tokens[1:]))


FAST = dict(progress=False, batch_size=64)


# -- the planted bigram ---------------------------------------------------------------------------
def test_finds_planted_bigram_for_a_neuron():
    model = planted_bigram_model()
    r = dream(model, Target.neuron("L0.mlp_post", 0),
              DreamConfig(length=5, steps=40, population=4, children=16, topk=4, lambdas=(0.0,) * 4, **FAST))
    best = r.best()
    assert has_bigram(best.tokens)
    assert best.activation == pytest.approx(1.0, abs=1e-3)
    j = best.tokens.index(A)  # the activation sits on B, right after A, and nowhere else
    assert best.per_token[j + 1] == pytest.approx(1.0, abs=1e-3)
    assert sum(v > 0.01 for v in best.per_token) == sum(
        x == A and y == B for x, y in zip(best.tokens, best.tokens[1:]))


def test_gradient_guides_the_search_on_a_large_vocabulary():
    # pre-activation target at the last position (not flat): with no random exploration, GCG
    # candidates alone must find the bigram among 128^2 pairs within a budget far below what
    # blind search needs (1/16384 per child)
    model = planted_bigram_model(vocab=128)
    r = dream(model, Target.neuron("L0.mlp_pre", 0, position=-1),
              DreamConfig(length=5, steps=12, population=2, children=8, topk=2, explore=0.0,
                          lambdas=(0.0, 0.0), **FAST))
    assert r.best().tokens[-2:] == (A, B)
    assert r.best().activation == pytest.approx(1.0, abs=1e-3)
    assert r.evaluated <= 2 + 12 * 16


def test_finds_planted_bigram_for_a_dictionary_feature():
    model = planted_bigram_model()
    d = PlantedDict(model)
    r = dream(model, Target.feature("L0.resid_post", d, 3),
              DreamConfig(length=4, steps=40, population=4, children=16, lambdas=(0.0,) * 4, **FAST))
    best = r.best()
    assert has_bigram(best.tokens)
    acts = capture(model, torch.tensor([best.tokens]), "L0.resid_post")
    oracle = d.encode(acts[model.site("L0.resid_post")][0]).values[:, 3]  # the dictionary's own encode
    assert best.activation == pytest.approx(float(oracle.max()), abs=1e-5)
    assert best.per_token == pytest.approx(oracle.tolist(), abs=1e-5)


def test_fluency_weight_moves_along_the_frontier():
    model = planted_bigram_model()
    lambdas = (0.0, 0.05, 0.2, 1.0, 5.0)
    r = dream(model, Target.neuron("L0.mlp_post", 0),
              DreamConfig(length=4, steps=40, population=5, children=16, lambdas=lambdas, **FAST))
    ces = [m.cross_entropy for m in r.members]
    acts = [m.activation for m in r.members]
    assert [m.lam for m in r.members] == list(lambdas)
    assert all(a >= b - 1e-9 for a, b in zip(ces, ces[1:]))  # CE falls as λ rises
    assert all(a >= b - 1e-9 for a, b in zip(acts, acts[1:]))
    assert has_bigram(r.members[0].tokens) and not has_bigram(r.members[-1].tokens)
    assert ces[-1] < ces[0] - 1.0
    # each member is the best of the whole frontier for its λ
    for m in r.members:
        assert m.activation - m.lam * m.cross_entropy >= max(
            f.activation - m.lam * f.cross_entropy for f in r.frontier) - 1e-9
    # the frontier: CE ascending, activation strictly ascending (nothing on it is dominated)
    fr = [(f.cross_entropy, f.activation) for f in r.frontier]
    assert all(c1 <= c2 and a1 < a2 for (c1, a1), (c2, a2) in zip(fr, fr[1:]))


# -- rare features of thresholded dictionaries: the surrogate -----------------------------------
RARE_A, RARE_B, RARE_V = 201, 157, 256  # a bigram of two high token ids in a 256-token vocabulary


def rare_dictionary(model: Model, architecture: str):
    """A real mechscope top-k (k = 1) or JumpReLU SAE on L0.resid_post of the planted model whose
    feature 3 has pre-activation ``2 [token = B] + 2 [stash = A] - 3``: 1 on the bigram (A, B),
    <= -1 elsewhere. Top-k: feature 0 is always on at 0.5, so feature 3 is in the top 1 only on
    the bigram; JumpReLU: feature 3's threshold is 0.5. It never fires on random prompts, and there
    its activation is flat (zero gradient)."""
    from mechscope.sae.config import JumpReluConfig, TopKConfig
    from mechscope.sae.jumprelu import JumpReluSAE
    from mechscope.sae.topk import TopKSAE

    d, v, ctx = model.d_model, RARE_V, 8
    if architecture == "topk":
        sae = TopKSAE(TopKConfig(d_in=d, d_dict=6, k=1, site_in="L0.resid_post"))
    else:
        sae = JumpReluSAE(JumpReluConfig(d_in=d, d_dict=6, k=1, site_in="L0.resid_post"))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_dec.zero_()
        sae.b_enc.copy_(torch.tensor([0.5, -5, -5, -3, -5, -5]))
        sae.W_enc[3, RARE_B], sae.W_enc[3, v + ctx + RARE_A] = 2.0, 2.0
        if architecture == "jumprelu":
            sae.threshold.fill_(0.5)
    return sae


@pytest.mark.parametrize("architecture", ["topk", "jumprelu"])
def test_surrogate_finds_a_rare_feature_that_the_plain_search_never_sees(architecture):
    model = planted_bigram_model(vocab=RARE_V, first=RARE_A, second=RARE_B)
    sae = rare_dictionary(model, architecture)
    target = Target.feature("L0.resid_post", sae, 3)
    cfg = dict(length=5, steps=15, population=4, children=16, topk=4, lambdas=(0.0, 0.0, 0.1, 1.0), **FAST)
    # the feature is off on every starting prompt and everywhere but the bigram
    start = torch.randint(0, RARE_V, (4096, 5), generator=torch.Generator().manual_seed(1))
    acts = capture(model, start, "L0.resid_post")[model.site("L0.resid_post")]
    with torch.no_grad():
        assert float(sae.encode(acts.reshape(-1, model.d_model)).dense(6)[:, 3].max()) == 0.0
    plain = dream(model, target, DreamConfig(surrogate=False, **cfg))
    found = dream(model, target, DreamConfig(surrogate=True, **cfg))
    # without the surrogate the gradient is zero and the search never leaves activation 0 ...
    assert plain.best().activation == 0.0 and plain.config["surrogate_used"] is False
    # ... with it, the search climbs the margin until the feature enters the code, then fires
    best = found.best()
    assert found.config["surrogate_used"] is True
    assert any(x == RARE_A and y == RARE_B for x, y in zip(best.tokens, best.tokens[1:]))
    with torch.no_grad():  # the dictionary's own code
        oracle = sae.encode(capture(model, torch.tensor([best.tokens]), "L0.resid_post")
                            [model.site("L0.resid_post")][0]).dense(6)[:, 3]
    assert best.activation == pytest.approx(float(oracle.max()), abs=1e-4)
    assert best.activation == pytest.approx(1.0, abs=1e-2)
    # the frontier reports the real activation, never the (negative) surrogate
    assert all(m.activation >= 0 for m in found.frontier)


def test_surrogate_leaves_other_targets_alone():
    model = tiny_model()
    cfg = dict(length=3, steps=4, population=2, children=4, **FAST)
    a = dream(model, Target.neuron("L0.mlp_post", 5), DreamConfig(surrogate=True, **cfg))
    b = dream(model, Target.neuron("L0.mlp_post", 5), DreamConfig(surrogate=False, **cfg))
    assert a.frontier == b.frontier and a.config["surrogate_used"] is False


# -- brute force on a tiny model --------------------------------------------------------------------
def tiny_model() -> Model:
    cfg = dict(n_layers=1, d_model=16, d_head=8, n_heads=2, d_mlp=32, n_ctx=8, d_vocab=12,
               act_fn="gelu", normalization_type="LN")
    return Model.from_config(cfg, name="tiny", seed=4)


@pytest.mark.parametrize("position", [-1, None])
def test_lambda_zero_reaches_the_brute_force_maximum(position):
    model, vocab, n = tiny_model(), list(range(6)), 3
    v = torch.randn(16, generator=torch.Generator().manual_seed(0))
    target = Target.direction("L0.resid_post", v, position=position)
    r = dream(model, target, DreamConfig(length=n, steps=30, population=4, children=8, topk=3,
                                         lambdas=(0.0,) * 4, **FAST), allowed=vocab)
    prompts = torch.tensor(list(itertools.product(vocab, repeat=n)))
    x = capture(model, prompts, "L0.resid_post")[model.site("L0.resid_post")] @ v  # [all, n]
    values = x[:, -1] if position == -1 else x.max(1).values
    best = r.best()
    assert best.activation >= float(values.max()) - 1e-5
    i = prompts.tolist().index(list(best.tokens))  # the reported value is the model's own
    assert best.activation == pytest.approx(float(values[i]), abs=1e-5)
    assert best.per_token == pytest.approx(x[i].tolist(), abs=1e-5)
    # and its cross-entropy is the prompt's mean next-token loss under the model (no BOS here)
    with torch.no_grad():
        logits = model(torch.tensor([best.tokens])).log_softmax(-1)[0]
    ce = -sum(float(logits[j, best.tokens[j + 1]]) for j in range(n - 1)) / (n - 1)
    assert best.cross_entropy == pytest.approx(ce, abs=1e-5)
    assert all(t in vocab for m in r.frontier for t in m.tokens)


def test_one_hot_embedding_hook_is_the_identity():
    from mechscope.circuits.dream_score import Scorer

    model = tiny_model()
    scorer = Scorer(model, Target.neuron("L0.mlp_post", 3), None)
    ids = torch.randint(0, 12, (3, 5), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([5, 4, 2])
    plain = scorer.forward(ids, lengths)
    hooked = scorer.forward(ids, lengths, torch.nn.functional.one_hot(ids, 12).float())
    for p, h in zip(plain, hooked):
        assert torch.allclose(p, h, atol=1e-5, equal_nan=True)


# -- targets ---------------------------------------------------------------------------------------
def test_head_and_logit_targets_read_the_model():
    model = tiny_model()
    from mechscope.circuits.dream_score import Scorer

    ids, lengths = torch.tensor([[1, 2, 3, 4]]), torch.tensor([4])
    v = torch.randn(16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        head = Scorer(model, Target.head(0, 1, v, position=2), None).forward(ids, lengths)[0]
        z = capture(model, ids, "L0.z.H1")[model.site("L0.z.H1")]
        oracle = (z[0, 2] @ model.attn(0).W_O[1]) @ v
    assert float(head[0]) == pytest.approx(float(oracle), abs=1e-5)
    with torch.no_grad():
        logit = Scorer(model, Target.logit(7, 2), None).forward(ids, lengths)[0]
        out = model(ids)[0, -1]
    assert float(logit[0]) == pytest.approx(float(out[7] - out[2]), abs=1e-5)


def test_bad_targets_and_configs_are_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="width 32"):
        Target.neuron("L0.mlp_post", 40).bind(model)
    with pytest.raises(ValueError, match="valid layers"):
        Target.neuron("L3.mlp_post", 0).bind(model)
    with pytest.raises(ValueError, match="width 16"):
        Target.direction("L0.resid_post", torch.ones(5)).bind(model)
    with pytest.raises(ValueError, match="out of range"):
        Target.logit(99).bind(model)
    with pytest.raises(ValueError, match="valid positions"):
        dream(model, Target.neuron("L0.mlp_post", 0, position=4), DreamConfig(length=3, **FAST))
    with pytest.raises(ValueError, match="lambdas has"):
        DreamConfig(population=3, lambdas=(0.0,))
    with pytest.raises(ValueError, match="length"):
        DreamConfig(length=(4, 2))
    with pytest.raises(ValueError, match="no token is allowed"):
        dream(model, Target.neuron("L0.mlp_post", 0), DreamConfig(**FAST), allowed=[])


# -- runs ----------------------------------------------------------------------------------------
def test_same_seed_same_frontier_and_global_rng_untouched():
    model = tiny_model()
    target = Target.neuron("L0.mlp_post", 5)
    cfg = DreamConfig(length=(2, 5), steps=10, population=4, children=6, seed=7, **FAST)
    state = torch.get_rng_state()
    r1 = dream(model, target, cfg)
    assert torch.equal(torch.get_rng_state(), state)
    r2 = dream(model, target, cfg)
    r3 = dream(model, target, DreamConfig(**{**cfg.__dict__, "batch_size": 5}))  # memory, same run
    assert r1.frontier == r2.frontier and r1.members == r2.members
    assert [m.tokens for m in r3.frontier] == [m.tokens for m in r1.frontier]
    lengths = {len(m.tokens) for m in r1.frontier + r1.members}
    assert all(2 <= n <= 5 for n in lengths)


def test_length_range_explores_lengths():
    model = planted_bigram_model()
    r = dream(model, Target.neuron("L0.mlp_post", 0, position=-1),
              DreamConfig(length=(2, 6), steps=30, population=4, children=12, length_moves=0.5,
                          lambdas=(0.0, 0.1, 1.0, 5.0), **FAST))
    assert r.best().tokens[-2:] == (A, B)  # the bigram must end the prompt (position -1)
    assert len({len(m.tokens) for m in r.frontier}) >= 2 or len(r.frontier) == 1


def test_result_json_round_trip(tmp_path):
    model = tiny_model()
    r = dream(model, Target.neuron("L0.mlp_post", 5), DreamConfig(length=3, steps=3, population=2,
                                                                   children=4, **FAST))
    path = r.save(tmp_path / "dream.json")
    import json

    back = DreamResult.from_json(json.loads(path.read_text()))
    assert back == r or (back.frontier == r.frontier and back.members == r.members)
    assert back.best().activation == r.best().activation
    assert math.isfinite(back.best(max_cross_entropy=r.frontier[0].cross_entropy).activation)


def test_text_reference_matches_the_model():
    from mechscope.circuits.dream import text_reference

    model = tiny_model()
    windows = torch.randint(0, 12, (7, 6), generator=torch.Generator().manual_seed(5))
    ref = text_reference(model, Target.neuron("L0.mlp_post", 2, position=-1), list(windows), batch_size=3)
    acts = capture(model, windows, "L0.mlp_post")[model.site("L0.mlp_post")][..., 2]
    assert ref.max_activation == pytest.approx(float(acts.max()), abs=1e-5)  # max over all positions
    i, j = divmod(int(acts.argmax()), 6)
    assert ref.max_context == tuple(windows[i, :j + 1].tolist())
    loss = model.tl(windows, return_type="loss", loss_per_token=True).mean(1)  # TransformerLens' own
    assert ref.cross_entropy == pytest.approx(float(loss.mean()), abs=1e-5)
    assert (ref.n_windows, ref.n_tokens) == (7, 42)
