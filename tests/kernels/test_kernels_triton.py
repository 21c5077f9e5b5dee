"""Triton: the interpreter suite (in a TRITON_INTERPRET=1 subprocess), ahead-of-time compilation
for a real GPU target (no GPU needed), and CUDA parity (skipped without CUDA)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from mechscope.kernels.parity import parity_errors  # noqa: E402

HERE = Path(__file__).parent
INTERPRETED = type(triton.language.zeros).__name__ == "InterpretedFunction"


@pytest.mark.skipif(INTERPRETED, reason="this process already runs the interpreter suite")
def test_interpreter_suite_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1", MECHSCOPE_KERNELS="triton")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HERE / "test_kernels_triton_interpret.py")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert " passed" in out and "skipped" not in out, out[-2000:]


def _compile(fn, signature: dict, constexprs: dict, arch: int = 90, num_warps: int = 4):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn, signature, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


@pytest.mark.skipif(INTERPRETED, reason="kernels are interpreted in this process")
@pytest.mark.parametrize("dtype, log_bm, log_k", [("fp32", 6, 5), ("bf16", 5, 7)])
def test_encoder_compiles_for_sm90(dtype, log_bm, log_k):
    """The GPU code path (sorting networks included) lowers to a cubin without a GPU."""
    from mechscope.kernels.triton_encode import _topk_encode_kernel

    ptr = f"*{dtype}"
    sig = dict(x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, out_ptr="*i64")
    sig |= {a: "i32" for a in ("n", "d_in", "d_sae", "cols_per_split", "n_splits", "stride_xm",
                                "stride_xk", "stride_wn", "stride_wk")}
    const = dict(RELU=True, TF32=dtype == "fp32", BLOCK_K=32, LOG_BM=log_bm, LOG_BN=7,
                 LOG_K=log_k)
    sig |= {a: "constexpr" for a in const}
    try:
        kernel = _compile(_topk_encode_kernel, sig, const, num_warps=8)
    except (ImportError, FileNotFoundError) as e:  # no CUDA backend / ptxas in this install
        pytest.skip(f"cannot compile for sm_90 here: {e}")
    assert "cubin" in kernel.asm


@pytest.mark.skipif(INTERPRETED, reason="kernels are interpreted in this process")
def test_decode_kernels_compile_for_sm90():
    from mechscope.kernels import triton_decode as td

    base = dict(idx_ptr="*i64", n="i32", k="i32", d="i32")
    cases = [
        (td._bag_matmul_kernel, dict(w_ptr="*fp32", W_ptr="*fp32", b_ptr="*fp32",
                                     out_ptr="*fp32"), dict(HAS_BIAS=True, BLOCK_M=32, BLOCK_D=128)),
        (td._gather_dot_kernel, dict(W_ptr="*bf16", y_ptr="*bf16", out_ptr="*fp32"),
         dict(BLOCK_J=32, BLOCK_D=128)),
        (td._bag_scatter_kernel, dict(w_ptr="*fp32", y_ptr="*fp32", out_ptr="*fp32"),
         dict(BLOCK_M=32, BLOCK_D=128)),
    ]
    for fn, ptrs, const in cases:
        sig = {a: (base | ptrs)[a] if a not in const else "constexpr" for a in fn.arg_names}
        try:
            kernel = _compile(fn, sig, const)
        except (ImportError, FileNotFoundError) as e:
            pytest.skip(f"cannot compile for sm_90 here: {e}")
        assert "cubin" in kernel.asm


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("k", [1, 32, 128])
def test_cuda_parity_fp32(monkeypatch, k):
    from mechscope.kernels import sparse_decode, topk_encode

    monkeypatch.setenv("MECHSCOPE_KERNELS", "triton")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    err = parity_errors(topk_encode, sparse_decode, n=1000, d_in=257, d_sae=3000, k=k,
                        d_out=300, device="cuda")
    assert err.pop("bad_indices") == 0
    assert max(err.values()) < 1e-5, err


@cuda
def test_cuda_bf16_selection(monkeypatch):
    from mechscope.kernels import topk_encode

    monkeypatch.setenv("MECHSCOPE_KERNELS", "triton")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(512, 768, device="cuda", generator=g).bfloat16()
    W = (torch.randn(8192, 768, device="cuda", generator=g) / 28).bfloat16()
    b = torch.zeros(8192, device="cuda", dtype=torch.bfloat16)
    code = topk_encode(x, W, b, 64)
    act = (x.float() @ W.float().T).relu()  # the kernel ranks fp32 accumulators
    torch.testing.assert_close(code.values.float(), act.topk(64).values, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(act.gather(1, code.indices), code.values.float(), atol=2e-2,
                               rtol=1e-2)
