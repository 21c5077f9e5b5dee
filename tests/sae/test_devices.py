"""Devices and dtypes by name (mechscope.devices), model loading in a dtype, dictionary dtypes,
and device-agnostic checkpoints. Nothing here needs a GPU; the CUDA cases run where one is."""

from __future__ import annotations

import pytest
import torch

from mechscope.devices import check_device_name, check_dtype_name, resolve_device, resolve_dtype

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_device_names():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    assert check_device_name("cuda:3") == "cuda:3"
    for bad in ("gpu", "cuda:x", "CUDA", ""):
        with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N"):
            check_device_name(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_dtype_names():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype(None) is torch.float32 and check_dtype_name("fp32") == "float32"
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        resolve_dtype("int8")


def test_load_model_in_bfloat16_matches_float32():
    from mechscope.interp.models import load_model

    m32 = load_model("attn-only-induction", device="auto")
    m16 = load_model("attn-only-induction", device="cpu", dtype="bfloat16")
    assert m16.dtype is torch.bfloat16 and all(p.dtype is torch.bfloat16 for p in m16.tl.parameters())
    tokens = torch.randint(1, 50, (2, 12))
    a, b = m32(tokens).float().log_softmax(-1), m16(tokens).float().log_softmax(-1)
    # bf16 keeps ~3 significant digits: the same distribution, not the same bits
    assert (a.exp() - b.exp()).abs().max() < 0.05
    assert not torch.equal(a, b)


def _src():
    from mechscope.sae.synthetic import PlantedSource

    return PlantedSource(d=16, n_features=32, batch_size=64, seed=3)


def test_dictionary_dtype_and_autocast_train(tmp_path, make_cfg):
    from mechscope.sae.trainer import train

    with pytest.raises(ValueError, match="config field dtype='int8'"):
        make_cfg(dtype="int8")
    ref = train(make_cfg(steps=30), _src(), tmp_path / "fp32", resume=False)
    bf = train(make_cfg(steps=30, dtype="bfloat16"), _src(), tmp_path / "bf16", resume=False)
    auto = train(make_cfg(steps=30, autocast="bfloat16"), _src(), tmp_path / "ac", resume=False, device="cpu")
    assert bf.dictionary.W_dec.dtype is torch.bfloat16
    assert auto.dictionary.W_dec.dtype is torch.float32  # autocast: parameters stay fp32
    # all three learn the planted features about equally well (a loss, not bits)
    for r in (bf, auto):
        assert float(r.last.fvu) < max(2 * float(ref.last.fvu), float(ref.last.fvu) + 0.05)


def test_checkpoint_holds_cpu_tensors_and_resumes_on_the_cpu(tmp_path, make_cfg):
    """Checkpoints carry no device: every tensor is read back onto the CPU and copied into the
    resumed run's parameters wherever they live; a run checkpointed in bfloat16 resumes."""
    from safetensors import safe_open

    from .test_trainer import Crashing
    from mechscope.sae.trainer import train

    c = make_cfg(steps=16, checkpoint_every=8, dtype="bfloat16")
    full = train(c, _src(), tmp_path / "full", resume=False, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(c, Crashing(_src(), at=9), tmp_path / "cut", device="auto")
    with safe_open(str(tmp_path / "cut" / "checkpoint.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).device.type == "cpu" for k in f.keys())
    resumed = train(c, _src(), tmp_path / "cut", device="cpu")
    assert resumed.resumed_from == 8
    for k, v in full.dictionary.state_dict().items():
        assert torch.equal(v, resumed.dictionary.state_dict()[k]), k


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_load_checkpoint_moves_tensors_to_the_runs_device(tmp_path, make_cfg):
    """Resuming copies the CPU tensors of the file into runs on another device: simulated with
    runs on the 'meta' device, whose parameters and Adam state must end up on meta."""
    from mechscope.sae.checkpoint import load_checkpoint
    from mechscope.sae.trainer import Run, train

    c = make_cfg(steps=4)
    train(c, _src(), tmp_path, resume=False)
    run = Run.new(c, tmp_path / "meta", device="meta")
    run.opt = torch.optim.Adam(run.model.parameters())  # fused Adam has no meta kernels
    run.cfg = c
    load_checkpoint(tmp_path / "checkpoint.safetensors", [run])
    assert all(p.device.type == "meta" for p in run.model.parameters())
    assert all(v.device.type == "meta" for s in run.opt.state.values() for k, v in s.items() if k != "step")


@cuda
def test_cuda_run_resumes_on_the_cpu(tmp_path, make_cfg):
    from .test_trainer import Crashing
    from mechscope.sae.trainer import train

    c = make_cfg(steps=16, checkpoint_every=8)
    full = train(c, _src(), tmp_path / "full", resume=False, device="cuda")
    with pytest.raises(KeyboardInterrupt):
        train(c, Crashing(_src(), at=9), tmp_path / "cut", device="cuda")
    resumed = train(c, _src(), tmp_path / "cut", device="cpu")
    for k, v in full.dictionary.state_dict().items():
        torch.testing.assert_close(v.cpu(), resumed.dictionary.state_dict()[k], rtol=1e-4, atol=1e-5)
