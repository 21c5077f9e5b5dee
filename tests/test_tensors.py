"""mechscope.tensors: one state-dict check, used by every loader (zoo, dictionaries, checkpoints,
codebook models); each error names the file and every difference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.tensors import StateDictError, check_state_dict, load_checked, state_dict_problems


def test_every_difference_in_one_error():
    got = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "extra": torch.zeros(1)}
    want = {"a": (2, 3), "b": (5,), "c": (1,)}
    with pytest.raises(StateDictError) as err:
        check_state_dict(got, want, "/x/w.safetensors")
    msg = str(err.value)
    assert msg.startswith("/x/w.safetensors: ")
    assert "missing tensor(s) 'c'" in msg and "unexpected tensor(s) 'extra'" in msg
    assert "tensor 'b' has shape (4,), expected (5,)" in msg and "'a' has shape" not in msg
    assert len(state_dict_problems(got, want, allow_unexpected=True)) == 2
    assert state_dict_problems({"a": torch.zeros(2, 3)}, {"a": torch.Size([2, 3])}) == []


def test_load_checked_against_a_module():
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    load_checked(dst, src.state_dict(), "f")
    assert torch.equal(dst.weight, src.weight)  # the oracle: the loaded module is the saved one
    with pytest.raises(StateDictError, match=r"f: .*'weight' has shape \(2, 4\), expected \(2, 3\)"):
        load_checked(dst, nn.Linear(4, 2).state_dict(), "f")
    with pytest.raises(ValueError, match="missing tensor.*'bias'"):
        check_state_dict({"weight": src.weight}, dst, "f", error=ValueError)


def test_zoo_folder_with_wrong_weights_names_the_file(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from mechscope.interp import zoo
    from mechscope.interp.zoo import store

    src = zoo.model_dir("attn-only-induction")
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    w = load_file(str(folder / store.WEIGHTS))
    key = sorted(w)[0]
    w["not.a.parameter"] = w.pop(key)
    save_file(w, str(folder / store.WEIGHTS))
    with pytest.raises(StateDictError, match=rf"{store.WEIGHTS}: missing tensor\(s\) '{key}'.*unexpected tensor\(s\) 'not.a.parameter'"):
        store.load_folder(folder)
