"""The eager reference (the CPU path) against the dense autograd oracle and the sparse primitives
against dense products."""

import pytest
import torch

from mechscope.kernels import SparseCode, sparse_decode, topk_encode
from mechscope.kernels.dispatch import _check_encode
from mechscope.kernels.parity import parity_errors
from mechscope.kernels.sparse_ops import (
    bag_bias_grad,
    bag_gather_dot,
    bag_matmul,
    bag_scatter,
    gather_dot_chunked,
)

TOL64 = 1e-10


@pytest.fixture(autouse=True)
def _reference(monkeypatch):
    monkeypatch.setenv("MECHSCOPE_KERNELS", "reference")


@pytest.mark.parametrize("d_in", [48, 64, 257])
@pytest.mark.parametrize("k", [1, 64])
@pytest.mark.parametrize("relu", [True, False])
def test_parity_with_dense_oracle(d_in, k, relu):
    # d_sae = 200 is not a multiple of any tile size; d_out != d_in checks the transposes
    err = parity_errors(topk_encode, sparse_decode, n=37, d_in=d_in, d_sae=200, k=k,
                        d_out=d_in + 3, relu=relu, dtype=torch.float64, seed=d_in + k)
    assert err.pop("bad_indices") == 0
    assert max(err.values()) < TOL64, err


@pytest.mark.parametrize("relu", [True, False])
def test_ties_are_resolved_to_valid_selections(relu):
    err = parity_errors(topk_encode, sparse_decode, n=16, d_in=48, d_sae=131, k=64, relu=relu,
                        dtype=torch.float64, ties=True)
    assert err.pop("bad_indices") == 0
    assert max(err.values()) < TOL64, err


def test_few_positive_preactivations_pad_with_zeros():
    # strongly negative bias: most rows have fewer than k positive pre-activations
    x = torch.randn(20, 48, dtype=torch.float64)
    W = torch.randn(100, 48, dtype=torch.float64)
    b = torch.full((100,), -12.0, dtype=torch.float64, requires_grad=True)
    code = topk_encode(x, W, b, 16)
    pos = ((x @ W.T + b) > 0).sum(1).clamp(max=16)
    assert torch.equal(code.l0().long(), pos)
    assert (code.values >= 0).all()
    code.values.sum().backward()
    # gradient only reaches the latents that are both selected and active
    active = torch.zeros(100, dtype=torch.float64).index_add_(
        0, code.indices.flatten(), (code.values > 0).double().flatten())
    assert torch.equal(b.grad, active)


def test_float32_matches_float64_oracle():
    err = parity_errors(topk_encode, sparse_decode, n=33, d_in=64, d_sae=300, k=32)
    assert err.pop("bad_indices") == 0
    assert max(err.values()) < 1e-4, err


def test_gradcheck_small():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    W = torch.randn(11, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True)
    Wd = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    bd = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def f(x, W, b, Wd, bd):
        return sparse_decode(topk_encode(x, W, b, 3, relu=False), Wd, bd)

    assert torch.autograd.gradcheck(f, (x, W, b, Wd, bd))


def _code(n, k, m, dup=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, m, (n, k), generator=g)
    if dup:
        idx[:, -1] = idx[:, 0]  # repeated latents in a row must add up
    return idx, torch.randn(n, k, generator=g, dtype=torch.float64)


def test_sparse_primitives_match_dense_products():
    n, k, m, d = 23, 5, 40, 9
    idx, w = _code(n, k, m)
    S = SparseCode(w, idx).dense(m)
    W = torch.randn(m, d, dtype=torch.float64)
    y = torch.randn(n, d, dtype=torch.float64)
    torch.testing.assert_close(bag_matmul(idx, w, W), S @ W)
    torch.testing.assert_close(bag_scatter(idx, w, y, m), S.T @ y)
    torch.testing.assert_close(bag_bias_grad(idx, w, m), S.sum(0))
    expect = torch.einsum("nkd,nd->nk", W[idx], y)
    torch.testing.assert_close(bag_gather_dot(idx, W, y), expect)
    torch.testing.assert_close(gather_dot_chunked(idx, W, y), expect)


def test_sparse_primitives_empty_batch():
    idx = torch.zeros(0, 3, dtype=torch.long)
    w = torch.zeros(0, 3)
    assert bag_matmul(idx, w, torch.randn(10, 4)).shape == (0, 4)
    assert bag_scatter(idx, w, torch.zeros(0, 4), 10).abs().sum() == 0
    assert bag_gather_dot(idx, torch.randn(10, 4), torch.zeros(0, 4)).shape == (0, 3)


def test_no_dense_gradient_buffers():
    # the reference backward must not allocate anything of size n * d_sae
    n, d, m, k = 64, 16, 4096, 4
    x = torch.randn(n, d, requires_grad=True)
    W = torch.randn(m, d, requires_grad=True)
    b = torch.zeros(m, requires_grad=True)
    code = topk_encode(x, W, b, k)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        code = topk_encode(x, W, b, k)
        x_hat = sparse_decode(code, W, b[:d])
    assert max(sizes) < n * m, sizes  # saved: x, W, values, indices -- never pre/act
    x_hat.sum().backward()


def test_bad_inputs_raise_clear_errors():
    x, W, b = torch.randn(4, 8), torch.randn(10, 8), torch.randn(10)
    with pytest.raises(ValueError, match="k must be"):
        topk_encode(x, W, b, 11)
    with pytest.raises(ValueError, match="k must be"):
        topk_encode(x, W, b, 0)
    # shape errors: our message, or jaxtyping's when run-time shape checking is on
    with pytest.raises((ValueError, TypeError)):
        topk_encode(x, torch.randn(10, 9), b, 2)
    with pytest.raises(ValueError, match="shape mismatch"):
        _check_encode(x, torch.randn(10, 9), b, 2)
    with pytest.raises(ValueError, match="flatten batch dims"):
        _check_encode(x[None], W, b, 2)
    with pytest.raises(TypeError, match="dtype mismatch"):
        topk_encode(x.double(), W, b, 2)
    code = topk_encode(x, W, b, 2)
    with pytest.raises(IndexError, match="valid is"):
        sparse_decode(SparseCode(code.values, code.indices + 10), W, torch.zeros(8))
    with pytest.raises(TypeError, match="int64"):
        sparse_decode(SparseCode(code.values, code.indices.int()), W, torch.zeros(8))
    with pytest.raises((ValueError, TypeError)):
        sparse_decode(code, W, torch.zeros(7))
