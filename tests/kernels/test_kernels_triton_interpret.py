"""The Triton kernels, run on CPU tensors by the Triton interpreter, against the dense oracle.

Triton picks the interpreter when ``triton`` (its standard library included) is imported, so
these tests only run in a process started with TRITON_INTERPRET=1; `test_kernels_triton.py`
launches one. Shapes are small: the interpreter runs each tile in NumPy.
"""

import os

import pytest
import torch

from mechscope.kernels import available, sparse_decode, topk_encode
from mechscope.kernels.code import SparseCode
from mechscope.kernels.dense import dense_topk_encode
from mechscope.kernels.parity import parity_errors


def _interpreter_active() -> bool:
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton.language as tl
    except ImportError:
        return False
    return type(tl.zeros).__name__ == "InterpretedFunction"


pytestmark = pytest.mark.skipif(
    not _interpreter_active(),
    reason="needs a process started with TRITON_INTERPRET=1 (test_kernels_triton.py runs one)",
)

TOL32 = 2e-6  # fp32 vs fp32 oracle, relative to the largest magnitude


@pytest.fixture(autouse=True)
def interpreted(monkeypatch):
    monkeypatch.setenv("MECHSCOPE_KERNELS", "triton")
    from mechscope.kernels import triton_encode

    return triton_encode


def _assert_parity(err, tol=TOL32):
    assert err.pop("bad_indices") == 0
    assert max(err.values()) < tol, err


# d_sae = 200 is not a multiple of the 16/64/128-wide tiles; d_out = d_in + 3 checks transposes
@pytest.mark.parametrize(
    "d_in, k, relu", [(48, 1, True), (64, 64, False), (257, 64, True), (257, 1, False)]
)
def test_triton_parity_with_dense_oracle(d_in, k, relu):
    err = parity_errors(topk_encode, sparse_decode, n=19, d_in=d_in, d_sae=200, k=k,
                        d_out=d_in + 3, relu=relu, seed=d_in + k)
    _assert_parity(err)


def test_available_reports_interpreter():
    info = available("cpu")
    assert info.backend == "triton" and info.interpret and info.mode == "triton"


def test_triton_ties():
    err = parity_errors(topk_encode, sparse_decode, n=16, d_in=48, d_sae=131, k=64, ties=True)
    _assert_parity(err)


def test_triton_relu_pads_with_zeros():
    x, W = torch.randn(16, 48), torch.randn(100, 48)
    b = torch.full((100,), -10.0)
    code = topk_encode(x, W, b, 16)
    expect = ((x @ W.T + b) > 0).sum(1).clamp(max=16)
    assert torch.equal(code.l0().long(), expect)


@pytest.mark.parametrize("splits, block_n", [(1, 16), (3, 16), (2, 64)])
def test_streaming_topk_across_tiles_and_splits(interpreted, splits, block_n):
    # many tiles per split and several splits: exercises the running merge and the final topk
    g = torch.Generator().manual_seed(splits)
    x, W, b = torch.randn(17, 32, generator=g), torch.randn(150, 32, generator=g), torch.randn(150)
    for k in (5, 16) if splits == 1 else (5,):
        values, idx = interpreted.topk_keys(x, W, b, k, True, splits=splits, block_n=block_n)
        ref, _ = dense_topk_encode(x, W, b, k)
        act = (x @ W.T + b).relu()
        torch.testing.assert_close(values, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(act.gather(1, idx), values, atol=1e-5, rtol=1e-5)


def test_negative_values_keep_their_order(interpreted):
    # relu=False with all-negative pre-activations: the int64 key must order negative floats
    x, W = torch.randn(16, 16), torch.randn(64, 16) * 1e-3
    b = -torch.linspace(1, 50, 64)[torch.randperm(64)]
    values, idx = interpreted.topk_keys(x, W, b, 8, False)
    ref, _ = dense_topk_encode(x, W, b, 8, relu=False)
    torch.testing.assert_close(values, ref)
    assert (values < 0).all()


def test_float16_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 48, generator=g).half()
    W = torch.randn(120, 48, generator=g).half()
    b = torch.randn(120, generator=g).half()
    code = topk_encode(x, W, b, 8)
    act = (x.float() @ W.float().T + b.float()).relu()  # the kernel ranks fp32 accumulators
    assert code.values.dtype == torch.float16
    torch.testing.assert_close(code.values.float(), act.topk(8).values, atol=2e-2, rtol=2e-3)
    torch.testing.assert_close(act.gather(1, code.indices), code.values.float(), atol=2e-2,
                               rtol=2e-3)


def test_decode_kernels_with_repeated_latents():
    # rows sharing latents and repeats within a row hit the same atomic_add addresses
    g = torch.Generator().manual_seed(0)
    n, k, m, d = 40, 6, 9, 37
    idx = torch.randint(0, m, (n, k), generator=g)
    idx[:, 1] = idx[:, 0]
    v = torch.randn(n, k, generator=g, requires_grad=True)
    W = torch.randn(m, d, generator=g, requires_grad=True)
    b = torch.randn(d, generator=g, requires_grad=True)
    R = torch.randn(n, d, generator=g)
    (sparse_decode(SparseCode(v, idx), W, b) * R).sum().backward()
    grads = [t.grad for t in (v, W, b)]
    v2, W2, b2 = (t.detach().clone().requires_grad_() for t in (v, W, b))
    ((SparseCode(v2, idx).dense(m) @ W2 + b2) * R).sum().backward()
    for got, want in zip(grads, (v2.grad, W2.grad, b2.grad)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_forced_triton_rejects_unsupported_inputs():
    x, W, b = torch.randn(4, 8), torch.randn(200, 8), torch.zeros(200)
    with pytest.raises(ValueError, match="k=129 > 128"):
        topk_encode(x, W, b, 129)
    with pytest.raises(ValueError, match="float64"):
        topk_encode(x.double(), W.double(), b.double(), 4)
