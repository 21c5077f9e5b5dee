"""``mechscope eval``: the core report end to end, against an exact dictionary (the oracle)."""

from __future__ import annotations

import json

import pytest
import torch


def _exact_relu_sae(d: int, site: str):
    """relu(x) − relu(−x) = x: a ReLU SAE with atoms ±e_i reconstructs every activation exactly."""
    from mechscope.sae.config import ReluConfig
    from mechscope.sae.factory import build_dictionary

    m = build_dictionary(ReluConfig(d_in=d, d_dict=2 * d, k=1, site_in=site))
    eye = torch.eye(d)
    with torch.no_grad():
        m.W_enc.copy_(torch.cat([eye, -eye]))
        m.W_dec.copy_(torch.cat([eye, -eye]))
        m.b_enc.zero_()
        m.b_dec.zero_()
    return m


def test_eval_report_of_an_exact_dictionary(tmp_path, capsys):
    from mechscope.apps.cli import main
    from mechscope.interp.models import load_model
    from mechscope.sae.io import save_dictionary

    d = load_model("gpt2-shakespeare").cfg.d_model
    path = save_dictionary(_exact_relu_sae(d, "L1.resid_pre"), tmp_path / "exact")
    assert main(["eval", str(path), "--evals", "core", "--tokens", "3000", "--windows", "4", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "model_performance_preservation.ce_loss_score" in out
    r = json.loads((path / "eval.json").read_text())["eval_result_metrics"]
    assert r["model_performance_preservation"]["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert r["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1.0, abs=1e-4)
    assert r["model_behavior_preservation"]["kl_div_with_ablation"] > 0
    assert r["reconstruction_quality"]["fvu"] == pytest.approx(0.0, abs=1e-8)
    assert r["shrinkage"]["relative_reconstruction_bias"] == pytest.approx(1.0, abs=1e-5)
    assert r["misc_metrics"]["density_tokens"] == 3000
    # every coordinate is non-zero: exactly one of each ± pair fires, L0 = d, half the latents
    # fire on about half the tokens, so none is dead and all are dense
    assert r["sparsity"]["l0"] == pytest.approx(d, abs=0.01)
    assert r["misc_metrics"]["dead_fraction"] == 0.0


def test_eval_needs_a_site(tmp_path):
    from mechscope.apps.cli import main
    from mechscope.sae.io import save_dictionary

    path = save_dictionary(_exact_relu_sae(8, ""), tmp_path / "nosite")
    assert main(["eval", str(path), "--tokens", "10"]) == 2


def test_eval_absorption_and_sparse_probing_on_the_zoo_model(tmp_path, capsys):
    """The zoo model cannot spell (a first-letter probe on its residual stream is near chance), so
    absorption is reported as not evaluated with the probe's F1; sparse probing runs and its
    numbers are those of the library on the same lines."""
    import json as js

    from mechscope.apps.cli import main
    from mechscope.interp.models import load_model
    from mechscope.interp.zoo.corpus import DATA_DIR, corpus_text, split_works
    from mechscope.sae.io import load_dictionary, save_dictionary
    from mechscope.sae.sparse_probing import probing_set, sparse_probing, work_lines

    model = load_model("gpt2-shakespeare")
    path = save_dictionary(_exact_relu_sae(model.cfg.d_model, "L1.resid_pre"), tmp_path / "exact")
    assert main(["eval", str(path), "--evals", "absorption,sparse_probing", "--absorption-windows", "24",
                 "--probe-lines", "30", "--ks", "1,3", "--n-ctx", "64"]) == 0
    out = capsys.readouterr().out
    assert "absorption_first_letter: not evaluated" in out and "Probe F1 per letter" in out
    assert "sae.sae_top_3_test_accuracy" in out
    r = json.loads((path / "eval.json").read_text())
    assert "Probe F1 per letter" in r["absorption_first_letter"]["error"]
    assert "eval_result_metrics" not in r  # core was not asked for
    names = js.loads((DATA_DIR / "provenance.json").read_text())["splits"]["heldout"]["works"]
    lines, labels = work_lines(split_works(corpus_text("heldout")), names, per_class=30)
    want = sparse_probing(load_dictionary(path), probing_set(model, "L1.resid_pre", lines, labels, names), ks=(1, 3))
    got = r["sparse_probing"]["eval_result_metrics"]
    assert got["sae"]["sae_top_3_test_accuracy"] == pytest.approx(want.sae_top_k[3])
    assert got["llm"]["llm_test_accuracy"] == pytest.approx(want.llm_test_accuracy)
    assert [d["class"] for d in r["sparse_probing"]["eval_result_details"]] == names


def test_eval_rejects_unknown_evaluations(tmp_path, capsys):
    from mechscope.apps.cli import main
    from mechscope.sae.io import save_dictionary

    path = save_dictionary(_exact_relu_sae(8, "L0.resid_pre"), tmp_path / "d")
    assert main(["eval", str(path), "--evals", "core,spelling"]) == 2
    assert "valid: core, absorption, sparse_probing" in capsys.readouterr().err
