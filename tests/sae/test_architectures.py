"""Oracles for each architecture's maths: protocol identities, reference gradients, invariants."""

import pytest
import torch

from mechscope.sae.dictionary import Dictionary
from mechscope.sae.factory import build_dictionary
from mechscope.sae.jumprelu import _JumpReLU, _Step
from mechscope.sae.trainer import Run, train_step

ARCHS = ["topk", "batchtopk", "matryoshka", "relu", "gated", "jumprelu", "mp", "codebook"]


def _x(n=64, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _trained_a_bit(make_cfg, arch, tmp_path, **kw):
    run = Run.new(make_cfg(architecture=arch, **kw), tmp_path)
    x = _x()
    run.model.init_from_data(x, x)
    for s in range(3):
        train_step(run, _x(seed=s + 1), _x(seed=s + 1), s)
    run.opt.zero_grad(set_to_none=True)
    return run


@pytest.mark.parametrize("arch", ARCHS)
def test_dictionary_protocol_identity(make_cfg, tmp_path, arch):
    m = _trained_a_bit(make_cfg, arch, tmp_path).model
    assert isinstance(m, Dictionary)
    x = _x(seed=9) * 3
    with torch.no_grad():
        code = m.encode(x)
        x_hat = m.decode(code)
        # decode(f) = f · directions + b_dec (raw units)
        expect = code.dense(m.d_dict) @ m.directions + m.b_dec / m.scale_out
    assert code.values.shape == code.indices.shape and code.indices.dtype == torch.int64
    assert torch.allclose(x_hat, expect, atol=1e-4)
    assert m.directions.shape == (m.d_dict, m.d_out)


@pytest.mark.parametrize("block_rows", [None, 5])  # 5: the encoder's row blocks, last one partial
def test_topk_loss_and_gradients_match_dense_reference(make_cfg, tmp_path, monkeypatch, block_rows):
    if block_rows is not None:
        import mechscope.kernels.reference as ref_kernels

        monkeypatch.setattr(ref_kernels, "_BLOCK_ELEMENTS", block_rows * 48)  # d_dict = 48
    run = _trained_a_bit(make_cfg, "topk", tmp_path, aux_coeff=0.0)
    m = run.model
    x = _x(seed=5)
    out = m.loss(x, x, 0)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    # dense reference: mask the relu'd pre-activations to each row's top k
    pre = ((x - m.b_dec) @ m.W_enc.T + m.b_enc).relu()
    mask = torch.zeros_like(pre).scatter(1, pre.topk(m.cfg.k, dim=1).indices, 1.0)
    ref = ((pre * mask) @ m.W_dec + m.b_dec - x).pow(2).sum(-1).mean()
    ref.backward()
    assert torch.allclose(out.loss, ref, atol=1e-5)
    for n, p in m.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-5), n


def test_unit_norm_decoder_and_parallel_gradient_removed(make_cfg, tmp_path):
    m = _trained_a_bit(make_cfg, "topk", tmp_path).model
    assert torch.allclose(m.W_dec.norm(dim=-1), torch.ones(m.d_dict), atol=1e-5)
    x = _x(seed=3)
    m.loss(x, x, 0).loss.backward()
    m.remove_parallel_grad()
    assert (m.W_dec.grad * m.W_dec).sum(-1).abs().max() < 1e-5


def test_aux_k_only_trains_dead_latents(make_cfg, tmp_path):
    m = _trained_a_bit(make_cfg, "topk", tmp_path).model
    dead = torch.zeros(m.d_dict, dtype=torch.bool)
    dead[::3] = True
    m.tokens_since_fired.copy_(dead.long() * 10 * m.train_cfg.dead_tokens)
    x = _x(seed=4)
    x_c = m._centred(x)
    residual = torch.randn_like(x)
    aux = m.aux_k_loss(x_c, residual)
    assert aux > 0
    aux.backward()
    touched = m.W_dec.grad.abs().sum(-1) > 0
    assert touched.any() and not (touched & ~dead).any()
    assert m.b_dec.grad is None or m.b_dec.grad.abs().max() == 0


def test_batchtopk_keeps_n_times_k_and_learns_threshold(make_cfg, tmp_path):
    run = _trained_a_bit(make_cfg, "batchtopk", tmp_path, k=4)
    m = run.model
    x = _x(seed=7)
    out = m.loss(x, x, 0)
    l0 = out.code.l0()
    assert float(l0.sum()) == 64 * 4 and l0.max() > l0.min()  # total fixed, per-row adaptive
    assert float(m.threshold) > 0
    with torch.no_grad():
        infer = m._encode(x)
    kept = infer.values[infer.values > 0]
    assert float(kept.min()) > float(m.threshold)


def test_jumprelu_pseudo_derivatives():
    z = torch.tensor([[0.10, 0.1004, 0.3, -1.0]])
    theta = torch.tensor([0.1, 0.1, 0.1, 0.1], requires_grad=True)
    eps = 1e-3
    zz = z.clone().requires_grad_(True)
    f = _JumpReLU.apply(zz, theta, eps)
    assert torch.equal(f.detach(), torch.tensor([[0.0, 0.1004, 0.3, -0.0]]))
    f.sum().backward()
    # ∂f/∂θ = −(θ/ε) 1[|z − θ| < ε/2]: only the first two entries are inside the window
    assert torch.allclose(theta.grad, torch.tensor([-100.0, -100.0, 0.0, 0.0]))
    assert torch.equal(zz.grad, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    theta.grad = None
    zz.grad = None
    _Step.apply(zz, theta, eps).sum().backward()
    assert torch.allclose(theta.grad, torch.tensor([-1000.0, -1000.0, 0.0, 0.0]))
    assert zz.grad is None


def test_relu_l1_is_weighted_by_decoder_norm_and_warms_up(make_cfg, tmp_path):
    m = build_dictionary(*make_cfg(architecture="relu", l1_coeff=2.0, l1_warmup_steps=10).parts())
    with torch.no_grad():
        m.W_dec.mul_(torch.linspace(0.5, 2.0, m.d_dict)[:, None])
    x = _x()
    out = m.loss(x, x, 5)
    f = m._dense(x)
    l1 = (f * m.W_dec.norm(dim=-1)).sum(-1).mean()
    assert torch.allclose(out.terms["l1"], l1)
    assert torch.allclose(out.loss, out.terms["mse"] + 1.0 * l1)  # λ(5) = 2 · 5/10


def test_matching_pursuit_invariants(make_cfg, tmp_path):
    m = _trained_a_bit(make_cfg, "mp", tmp_path, k=4).model
    x_c = _x(seed=2)
    with torch.no_grad():
        code, r = m.pursuit(x_c, steps=1)
        a = m.atoms()[code.indices[:, 0]]
        # one step: the residual is orthogonal to the chosen atom, and the chosen atom maximises <x, d>
        assert (r * a).sum(-1).abs().max() < 1e-4
        assert torch.equal(code.indices[:, 0], (x_c @ m.atoms().T).argmax(-1))
        code, r = m.pursuit(x_c)
        # x̂ + residual = x, and the residual never grows
        assert torch.allclose(code.dense(m.d_dict) @ m.atoms() + r, x_c, atol=1e-5)
        norms = [x_c.norm(dim=-1)]
        for t in range(1, 5):
            norms.append(m.pursuit(x_c, steps=t)[1].norm(dim=-1))
        assert all((b <= a + 1e-5).all() for a, b in zip(norms, norms[1:]))
        # a residual threshold makes L0 adapt per row
        tau = float(norms[2].median())
        adaptive, _ = m.pursuit(x_c, residual_threshold=tau)
        l0 = adaptive.l0()
        assert l0.min() < 4 and l0.max() == 4


def test_matching_pursuit_memory_does_not_scale_with_steps_times_dict(make_cfg):
    """Autograd keeps O(k·n·d) for the pursuit, never a [k, n, d_dict] tensor."""
    m = build_dictionary(*make_cfg(architecture="mp", d_in=8, d_dict=4096, k=6).parts())
    x = _x(n=32, d=8)
    biggest = []

    def pack(t):
        biggest.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m.loss(x, x, 0).loss.backward()
    # the largest saved tensors are W_dec-sized ([d_dict, d], its normalisation); nothing of
    # n · d_dict = 131072 elements (one step's scores) or more is kept
    assert biggest and max(biggest) <= max(4096 * 8, 32 * 8) < 32 * 4096


def test_codebook_selects_by_cosine_and_replaces_dead_codes(make_cfg, tmp_path):
    run = _trained_a_bit(make_cfg, "codebook", tmp_path, k=2)
    m = run.model
    x = _x(seed=6)
    code = m._encode(x)
    cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(m.W_dec, dim=-1).T
    assert torch.equal(code.indices.sort(1).values, cos.topk(2, dim=1).indices.sort(1).values)
    assert torch.equal(code.values, torch.ones_like(code.values))
    st = m.straight_through(x.requires_grad_(True))
    st.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    before = m.W_dec.detach().clone()
    m.tokens_since_fired[:5] = m.train_cfg.dead_tokens
    m.after_step(x.detach(), x.detach(), torch.Generator().manual_seed(0))
    assert not torch.equal(m.W_dec[:5], before[:5]) and torch.equal(m.W_dec[5:], before[5:])
    assert int(m.tokens_since_fired[:5].max()) == 0


def test_matryoshka_loss_is_the_sum_of_nested_prefix_losses(make_cfg, tmp_path):
    """L = Σ_l ||x − (f_{<m_l} W_dec + b_dec)||² + aux, with f the batch-top-k code (dense oracle)."""
    run = _trained_a_bit(make_cfg, "matryoshka", tmp_path, d_dict=48, k=4, matryoshka_widths="6,20,48")
    m = run.model
    x = _x(seed=11)
    out = m.loss(x, x, 5)
    f = out.code.dense(48)
    expect = sum(((f[:, :w] @ m.W_dec[:w] + m.b_dec - x) ** 2).sum(-1).mean() for w in (6, 20, 48))
    assert torch.allclose(out.loss - out.terms["aux"], expect, atol=1e-4)
    assert set(out.terms) >= {"mse", "mse_6", "mse_20", "aux"}


def test_matryoshka_widths_are_validated(make_cfg):
    with pytest.raises(ValueError, match="matryoshka_widths"):
        make_cfg(architecture="matryoshka", d_dict=48, matryoshka_widths="8,4,48")
    with pytest.raises(ValueError, match="matryoshka_widths"):
        make_cfg(architecture="matryoshka", d_dict=48, matryoshka_widths="8,16")
    assert make_cfg(architecture="matryoshka", d_dict=64).dictionary.widths == (4, 16, 64)


def test_gated_paths_loss_and_gradients(make_cfg, tmp_path):
    """f = 1[π_gate > 0] relu(π_mag); the L1 and the auxiliary loss act on relu(π_gate) through
    a frozen decoder: the aux term sends no gradient to W_dec, the step none to the gate."""
    run = _trained_a_bit(make_cfg, "gated", tmp_path, l1_coeff=0.5)
    m = run.model
    x = _x(seed=12)
    xc = x - m.b_dec
    gate = xc @ m.W_enc.T + m.b_enc
    mag = xc @ (m.W_enc * m.r_mag.exp()[:, None]).T + m.b_mag
    f = (gate > 0) * mag.relu()
    out = m.loss(x, x, 10)
    assert torch.allclose(out.code.dense(m.d_dict), f.detach(), atol=1e-5)
    l1 = (gate.relu() * m.W_dec.norm(dim=-1)).sum(-1).mean()
    aux = ((gate.relu() @ m.W_dec + m.b_dec - x) ** 2).sum(-1).mean()
    rec = ((f @ m.W_dec + m.b_dec - x) ** 2).sum(-1).mean()
    assert torch.allclose(out.loss, rec + 0.5 * l1 + aux, atol=1e-4)
    run.opt.zero_grad(set_to_none=True)
    (out.loss - out.loss.detach()).backward()
    g_total = m.W_dec.grad.clone()
    m.zero_grad(set_to_none=True)
    (rec + 0.5 * l1).backward()
    assert torch.allclose(g_total, m.W_dec.grad, atol=1e-5)  # aux adds nothing to W_dec's gradient


def test_jumprelu_starts_at_the_scale_of_its_input():
    """At d_dict = 16·d_in an untrained JumpReLU's reconstruction has about the input's squared
    norm (W_enc = (2·d_in/d_dict)·W_dec); with W_enc = W_dec the firing latents' rows add up to
    ~8·x (FVU ~10 on the zoo model), which short runs never undid."""
    import torch

    from mechscope.sae.config import JumpReluConfig
    from mechscope.sae.factory import build_dictionary

    torch.manual_seed(0)
    sae = build_dictionary(JumpReluConfig(d_in=32, d_dict=512, site_in="L0.resid_post"))
    x = torch.randn(4096, 32)
    with torch.no_grad():
        ratio = (sae.decode(sae.encode(x)) - sae.b_dec).pow(2).sum(-1).mean() / x.pow(2).sum(-1).mean()
    assert 0.3 < float(ratio) < 3.0, float(ratio)
