"""``mechscope dream`` end to end on the zoo model (in-process, a few steps)."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.apps.cli import main
from mechscope.circuits.dream_result import DreamResult

SMALL = ["--model", "gpt2-shakespeare", "--length", "4", "--steps", "2", "--population", "2",
         "--children", "3", "--topk", "8"]


def test_dream_a_feature_of_a_saved_dictionary(tmp_path, capsys):
    from mechscope.sae.config import TopKConfig
    from mechscope.sae.factory import build_dictionary
    from mechscope.sae.io import save_dictionary

    sae = build_dictionary(TopKConfig(d_in=128, d_dict=32, k=4, site_in="L1.resid_post"))
    folder = save_dictionary(sae, tmp_path / "sae")
    assert main(["dream", *SMALL, "--feature", f"{folder}:5", "--reference", "zoo:heldout",
                 "--reference-windows", "8", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    result = DreamResult.from_json(json.loads((tmp_path / "out" / "dream.json").read_text()))
    assert result.target.startswith("L1.resid_post.f5") and result.model == "gpt2-shakespeare"
    assert all(len(m.tokens) == 4 for m in result.frontier)
    assert "zoo:heldout: max" in out and (tmp_path / "out" / "dream.html").exists()
    assert result.config["surrogate_used"] is True and "(firing-margin surrogate)" in out  # top-k: on by default
    # the saved activation is the dictionary's own value on the dreamed prompt
    from mechscope.interp.capture import capture
    from mechscope.interp.models import load_model

    model = load_model("gpt2-shakespeare")
    best = result.best()
    tokens = torch.tensor([[model.bos_id, *best.tokens]])
    x = capture(model, tokens, "L1.resid_post")[model.site("L1.resid_post")][0, 1:]
    with torch.no_grad():
        code = sae.encode(x).dense(32)[:, 5]
    assert best.activation == pytest.approx(float(code.max()), abs=1e-4)


def test_no_surrogate_flag(tmp_path):
    from mechscope.sae.config import TopKConfig
    from mechscope.sae.factory import build_dictionary
    from mechscope.sae.io import save_dictionary

    folder = save_dictionary(build_dictionary(TopKConfig(d_in=128, d_dict=32, k=4, site_in="L1.resid_post")),
                             tmp_path / "sae")
    assert main(["dream", *SMALL, "--feature", f"{folder}:5", "--no-surrogate", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "dream.json").read_text())["config"]["surrogate_used"] is False


def test_dream_a_neuron_and_a_logit(tmp_path):
    assert main(["dream", *SMALL, "--neuron", "L0.mlp_post:3", "--length", "2-5",
                 "--out", str(tmp_path / "n")]) == 0
    lengths = {len(m["tokens"]) for m in json.loads((tmp_path / "n" / "dream.json").read_text())["frontier"]}
    assert lengths <= {2, 3, 4, 5}
    assert main(["dream", *SMALL, "--logit", "#7,#9", "--out", str(tmp_path / "l")]) == 0
    assert "logit[7]-logit[9]" in json.loads((tmp_path / "l" / "dream.json").read_text())["target"]


def test_dream_rejects_bad_flags(tmp_path, capsys):
    assert main(["dream", *SMALL, "--neuron", "L0.mlp_post", "--out", str(tmp_path)]) == 2
    assert "--neuron expects" in capsys.readouterr().err
    assert main(["dream", *SMALL, "--neuron", "L9.mlp_post:1", "--out", str(tmp_path)]) == 2
    assert "valid layers" in capsys.readouterr().err
    assert main(["dream", *SMALL, "--logit", "thou art", "--out", str(tmp_path)]) == 2
    assert "give one token" in capsys.readouterr().err


def test_features_dream_flags_fail_before_work(tmp_path, capsys):
    from mechscope.sae.config import TopKConfig
    from mechscope.sae.factory import build_dictionary
    from mechscope.sae.io import save_dictionary

    folder = save_dictionary(build_dictionary(TopKConfig(d_in=128, d_dict=32, k=4, site_in="L1.resid_post")),
                             tmp_path / "sae")
    out = tmp_path / "fb"
    assert main(["features", str(folder), "--out", str(out), "--dream-features", "3,40"]) == 2
    assert "0..31" in capsys.readouterr().err
    assert main(["features", str(folder), "--out", str(out), "--dream-features", "3,x"]) == 2
    assert "comma-separated feature indices" in capsys.readouterr().err
    assert main(["features", str(folder), "--out", str(out), "--dream", "1", "--dream-steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert not (out / "index.html").exists()
