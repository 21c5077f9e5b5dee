"""`available()` and the MECHSCOPE_KERNELS kill switch."""

import subprocess
import sys

import pytest
import torch

from mechscope.kernels import available, topk_encode
from mechscope.kernels import dispatch


def test_import_is_cheap_and_does_not_import_triton():
    code = "import sys, mechscope.kernels; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("MECHSCOPE_KERNELS", raising=False)
    info = available("cpu")
    assert info.backend == "reference" and info.mode == "auto"
    assert "cpu" in info.reason


def test_auto_on_cuda_prefers_triton_when_importable(monkeypatch):
    monkeypatch.delenv("MECHSCOPE_KERNELS", raising=False)
    info = available("cuda")  # describes the choice; needs no GPU
    if info.triton_version is None:
        assert info.backend == "reference" and "not importable" in info.reason
    else:
        assert info.backend == "triton"


def test_kill_switch_forces_reference(monkeypatch):
    monkeypatch.setenv("MECHSCOPE_KERNELS", "reference")
    info = available("cuda")
    assert info.backend == "reference" and "MECHSCOPE_KERNELS=reference" in info.reason


def test_triton_not_importable_falls_back(monkeypatch):
    monkeypatch.delenv("MECHSCOPE_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "_triton_import", lambda: (None, "ImportError: boom"))
    info = available("cuda")
    assert info.backend == "reference" and "boom" in info.reason
    monkeypatch.setenv("MECHSCOPE_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="not importable"):
        available("cuda")


def test_forced_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("MECHSCOPE_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if dispatch._triton_import()[0] is None:
        pytest.skip("triton not installed")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        available("cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        topk_encode(torch.randn(2, 4), torch.randn(8, 4), torch.zeros(8), 2)
    # setting the variable after triton was imported is not enough: the error must say so
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if dispatch._interpreting():  # this process was started with TRITON_INTERPRET=1
        assert available("cpu").backend == "triton"
    else:
        with pytest.raises(RuntimeError, match="before triton is imported"):
            available("cpu")


def test_bad_mode_names_valid_ones(monkeypatch):
    monkeypatch.setenv("MECHSCOPE_KERNELS", "fast")
    with pytest.raises(ValueError, match="auto, reference, triton"):
        available()
