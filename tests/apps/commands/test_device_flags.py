"""``--device`` / ``--dtype`` reach the model of every subcommand that runs one (verify, edges,
dream here; train, cache, features, trace, routes, attention, demo in their own tests)."""

from __future__ import annotations

import pytest
import torch

from mechscope.apps.cli import main


def test_model_to_casts_and_keeps_the_function():
    from mechscope.interp.models import load_model

    ref = load_model("attn-only-induction")
    toks = torch.randint(1, ref.d_vocab, (2, 12))
    with torch.no_grad():
        want = ref(toks)
    half = load_model("attn-only-induction").to("cpu", "bf16")
    assert half.dtype == torch.bfloat16 and {p.dtype for p in half.module.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        got = half(toks).float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    with pytest.raises(ValueError, match="unsupported model dtype 'int4'; supported: float32, bfloat16, float16"):
        half.to(dtype="int4")


def test_verify_runs_every_model_in_the_flagged_dtype(monkeypatch, capsys):
    import mechscope.apps.commands.verify as verify

    seen = []

    def record(task, setup, known, method, threshold=0.1):
        seen.append((task, setup.model.dtype, setup.model.device.type))
        return {"task": task, "method": method, "found": [], "missed": [], "extra": []}

    monkeypatch.setattr(verify, "verify_task", record)
    assert main(["verify", "--quick", "--device", "cpu", "--dtype", "bfloat16"]) == 0
    assert {t for t, _, _ in seen} == {"planted-copy", "planted-induction", "induction"}
    assert {(d, dev) for _, d, dev in seen} == {(torch.bfloat16, "cpu")}
    assert main(["verify", "--dtype", "int8"]) == 2 and "unsupported model dtype 'int8'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["edges", "--prompts", "PROMPTS", "--out", "OUT"],
    ["dream", "--neuron", "L0.mlp_post:3", "--out", "OUT"],
])
def test_edges_and_dream_load_the_model_where_the_flags_say(argv, tmp_path, monkeypatch):
    import mechscope.interp.models as models

    class Loaded(Exception):
        pass

    calls = []

    def load(spec, device="cpu", dtype=None, **kw):
        calls.append((spec, str(device), str(dtype)))
        raise Loaded

    monkeypatch.setattr(models, "load_model", load)
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat sat\n")
    argv = [a.replace("PROMPTS", str(prompts)).replace("OUT", str(tmp_path / "o.json")) for a in argv]
    monkeypatch.setenv("MECHSCOPE_DEBUG", "1")  # the exception propagates
    with pytest.raises(Loaded):
        main([*argv, "--model", "attn-only-induction", "--device", "cpu", "--dtype", "float16"])
    assert calls == [("attn-only-induction", "cpu", "float16")]
