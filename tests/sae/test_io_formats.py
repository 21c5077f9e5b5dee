"""SAELens formats beyond the SAE classes: transcoders and matching pursuit load in SAELens as
their own classes with equal outputs; unit-norm decoder export; cfg.json metadata; sparsify
activations other than top-k refused."""

import json
from importlib.metadata import version

import pytest
import torch
from safetensors.torch import save_file

from mechscope.sae.io import DictionaryFileError, load_dictionary, load_sae_lens, save_dictionary
from mechscope.sae.trainer import Run, train_step

D_IN, D_OUT = 16, 12


def _trained(make_cfg, tmp_path, arch, transcoder=False, **kw):
    """A dictionary after a few steps on scaled, offset data (normalisation non-trivial); a
    transcoder maps x to a fixed linear function of x of another width."""
    sites = dict(transcoder=True, site_out="L1.mlp_out", d_out=D_OUT) if transcoder else {}
    run = Run.new(make_cfg(architecture=arch, site_in="L1.resid_mid", **{**sites, **kw}), tmp_path / "run")
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(D_IN, D_IN, generator=g) / 3
    xs = [torch.randn(64, D_IN, generator=g) * 5 + 2 for _ in range(4)]
    ys = [(x @ mix)[:, :run.model.d_out] + 1 if transcoder else x for x in xs]
    run.model.init_from_data(xs[0], ys[0])
    for s, (x, y) in enumerate(zip(xs, ys)):
        train_step(run, x, y, s)
    return run.model.eval(), torch.randn(32, D_IN, generator=g) * 5 + 2


@pytest.mark.parametrize("arch,sl_class", [("relu", "Transcoder"), ("jumprelu", "JumpReLUTranscoder"),
                                           ("batchtopk", "JumpReLUTranscoder")])
def test_transcoders_load_in_sae_lens_as_transcoders(make_cfg, tmp_path, arch, sl_class):
    kw = {"jumprelu_init_threshold": 0.05} if arch == "jumprelu" else {}
    ours, x = _trained(make_cfg, tmp_path, arch, transcoder=True, **kw)
    assert float(ours.scale_in) != float(ours.scale_out)  # two sites, two scales
    path = save_dictionary(ours, tmp_path / "tc", metadata={"model_name": "tiny", "context_size": 32})
    sl = load_sae_lens(path)
    assert type(sl).__name__ == sl_class and sl.cfg.d_out == D_OUT
    with torch.no_grad():
        code = ours.encode(x)
        assert code.values.abs().sum() > 0
        assert torch.allclose(sl.encode(x), code.dense(ours.d_dict), atol=1e-4)
        assert torch.allclose(sl(x), ours(x), atol=1e-4)
    meta = json.loads((path / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.1.hook_resid_mid" and meta["hook_name_out"] == "blocks.1.hook_mlp_out"
    # and SAELens' own transcoder folder reads back into mechscope as a transcoder
    sl.save_model(tmp_path / "from-sl")
    back = load_dictionary(tmp_path / "from-sl")
    assert back.cfg.transcoder and back.cfg.site_out == "L1.mlp_out" and back.d_out == D_OUT
    with torch.no_grad():
        assert torch.allclose(back(x), ours(x), atol=1e-4)


def test_top_k_transcoders_get_no_sae_lens_config(make_cfg, tmp_path):
    """SAELens 6.54 has no top-k transcoder: writing one as a top-k SAE at the input hook (the
    old behaviour) would be read as the wrong function, so no cfg.json is written."""
    ours, x = _trained(make_cfg, tmp_path, "topk", transcoder=True, d_out=D_IN)  # same widths
    (tmp_path / "tc").mkdir()
    (tmp_path / "tc" / "cfg.json").write_text("{}")  # a stale one from an earlier save goes
    path = save_dictionary(ours, tmp_path / "tc")
    assert not (path / "cfg.json").exists()
    assert json.loads((path / "mechscope.json").read_text())["sae_lens_architecture"] is None
    with torch.no_grad():
        assert torch.allclose(load_dictionary(path)(x), ours(x), atol=1e-5)


@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_matching_pursuit_loads_in_sae_lens(make_cfg, tmp_path, threshold):
    ours, x = _trained(make_cfg, tmp_path, "mp", mp_residual_threshold=threshold)
    s = float(ours.scale_in)
    assert s != 1.0
    path = save_dictionary(ours, tmp_path / "mp")
    sl = load_sae_lens(path)
    assert type(sl).__name__ == "MatchingPursuitSAE"
    with torch.no_grad():
        code = ours.encode(x)
        if threshold:  # the threshold stops some rows early (and SAELens at the same step)
            assert (code.values == 0).any() and (code.values != 0).any(dim=1).all()
        # the same atoms, coefficients in raw units (the pursuit is homogeneous in the input)
        assert torch.allclose(sl.encode(x), code.dense(ours.d_dict) / s, atol=1e-4)
        assert torch.allclose(sl(x), ours(x), atol=1e-4)
        # mechscope reads its own folder back with the codes it had
        back = load_dictionary(path)
        assert torch.allclose(back.encode(x).values, code.values, atol=1e-4)
        assert torch.equal(back.encode(x).indices, code.indices)


def test_mp_folders_written_unfolded_before_still_load(make_cfg, tmp_path):
    ours, x = _trained(make_cfg, tmp_path, "mp")
    path = save_dictionary(ours, tmp_path / "mp")
    (path / "cfg.json").unlink()
    old = {"W_dec": ours.W_dec.detach().clone(), "b_dec": ours.b_dec.detach().clone(),
           "scale_in": ours.scale_in.clone(), "scale_out": ours.scale_out.clone()}
    save_file(old, str(path / "sae_weights.safetensors"))
    back = load_dictionary(path)
    with torch.no_grad():
        assert torch.allclose(back(x), ours(x), atol=1e-5)
        assert torch.allclose(back.encode(x).values, ours.encode(x).values, atol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu", "mp"])
def test_unit_norm_decoder_export_keeps_reconstructions(make_cfg, tmp_path, arch):
    kw = {"jumprelu_init_threshold": 0.05} if arch == "jumprelu" else {}
    ours, x = _trained(make_cfg, tmp_path, arch, **kw)
    path = save_dictionary(ours, tmp_path / "unit", unit_norm_decoder=True)
    back, sl = load_dictionary(path), load_sae_lens(path)
    torch.testing.assert_close(back.directions.norm(dim=-1), torch.ones(ours.d_dict))
    torch.testing.assert_close(sl.W_dec.norm(dim=-1), torch.ones(ours.d_dict))
    with torch.no_grad():
        assert torch.allclose(back(x), ours(x), atol=1e-4)
        assert torch.allclose(sl(x), ours(x), atol=1e-4)
        # codes are the old ones times the row norms (raw units)
        norms = ours.directions.norm(dim=-1)
        dense = ours.encode(x).dense(ours.d_dict)
        expect = dense / float(ours.scale_in) if arch == "mp" else dense * norms
        assert torch.allclose(sl.encode(x), expect, atol=1e-4)
    assert json.loads((path / "mechscope.json").read_text())["unit_norm_decoder"] is True


def test_unit_norm_export_refuses_what_it_cannot_keep_exact(make_cfg, tmp_path):
    ours, _ = _trained(make_cfg, tmp_path, "topk")
    with torch.no_grad():
        ours.W_dec[0] *= 3  # top-k ranks latents: per-latent rescaling would change the selection
    with pytest.raises(ValueError, match="norms are equal"):
        save_dictionary(ours, tmp_path / "a", unit_norm_decoder=True)
    cb, _ = _trained(make_cfg, tmp_path / "cb", "codebook")
    with pytest.raises(ValueError, match="codebook dictionaries cannot be exported with unit-norm.*supported: "):
        save_dictionary(cb, tmp_path / "b", unit_norm_decoder=True)


def test_cfg_json_records_model_hook_context_and_installed_sae_lens(make_cfg, tmp_path):
    ours, _ = _trained(make_cfg, tmp_path, "topk")
    path = save_dictionary(ours, tmp_path / "a", metadata={"model_name": "zoo:tiny", "context_size": 64})
    meta = json.loads((path / "cfg.json").read_text())["metadata"]
    assert meta["sae_lens_version"] == version("sae-lens")
    assert (meta["model_name"], meta["hook_name"], meta["context_size"]) == ("zoo:tiny", "blocks.1.hook_resid_mid", 64)
    sl = load_sae_lens(path)
    assert (sl.cfg.metadata.model_name, sl.cfg.metadata.context_size) == ("zoo:tiny", 64)


def test_sparsify_groupmax_is_refused(tmp_path):
    m, d = 40, 16
    g = torch.Generator().manual_seed(0)
    save_file({"encoder.weight": torch.randn(m, d, generator=g), "encoder.bias": torch.zeros(m),
               "W_dec": torch.randn(m, d, generator=g), "b_dec": torch.zeros(d)}, str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"num_latents": m, "k": 4, "activation": "groupmax", "d_in": d}))
    with pytest.raises(DictionaryFileError, match="activation 'groupmax' is not supported; supported: topk"):
        load_dictionary(tmp_path)
