"""Files: SAELens-compatible folders both ways, sparsify folders, clear errors on bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mechscope.sae.io import DictionaryFileError, load_dictionary, load_sae_lens, save_dictionary
from mechscope.sae.trainer import Run, train_step


def _trained(make_cfg, arch, tmp_path, **kw):
    """A dictionary after a few steps on scaled, offset data (so normalisation is non-trivial)."""
    run = Run.new(make_cfg(architecture=arch, site_in="L1.resid_post", **kw), tmp_path / "run")
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 16, generator=g) * 5 + 2 for _ in range(4)]
    run.model.init_from_data(xs[0], xs[0])
    for s, x in enumerate(xs):
        train_step(run, x, x, s)
    return run.model.eval(), torch.randn(32, 16, generator=g) * 5 + 2


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk", "matryoshka", "gated"])
def test_sae_lens_loads_our_folders_with_identical_outputs(make_cfg, tmp_path, arch):
    # the JumpReLU threshold starts where it matters; other architectures have no such field
    ours, x = _trained(make_cfg, arch, tmp_path, **({"jumprelu_init_threshold": 0.05} if arch == "jumprelu" else {}))
    assert float(ours.scale_in) != 1.0
    path = save_dictionary(ours, tmp_path / "saved", metadata={"model_name": "tiny"})
    sl = load_sae_lens(path)
    with torch.no_grad():
        code = ours.encode(x)
        dense = code.dense(ours.d_dict)
        sl_acts = sl.encode(x)
        assert torch.allclose(sl_acts, dense, atol=1e-4)
        assert torch.allclose(sl.decode(sl_acts), ours.decode(code), atol=1e-4)
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "relu", "gated", "jumprelu", "mp", "codebook"])
def test_mechscope_round_trip(make_cfg, tmp_path, arch):
    ours, x = _trained(make_cfg, arch, tmp_path)
    back = load_dictionary(save_dictionary(ours, tmp_path / "saved"))
    assert type(back) is type(ours)
    with torch.no_grad():
        assert torch.allclose(back(x), ours(x), atol=1e-4)
        assert torch.allclose(back.directions, ours.directions, atol=1e-5)


def test_sae_lens_folder_written_by_sae_lens_loads(tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sl = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=5, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        for p in sl.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    sl.save_model(tmp_path)
    ours = load_dictionary(tmp_path)
    x = torch.randn(20, 16)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x).dense(40), sl.encode(x), atol=1e-5)
        assert torch.allclose(ours(x), sl(x), atol=1e-5)


def _sparsify_folder(path, d_in=16, m=40, k=4, d_out=None, transcode=False):
    g = torch.Generator().manual_seed(1)
    d_out = d_out or d_in
    t = {"encoder.weight": torch.randn(m, d_in, generator=g) * 0.3, "encoder.bias": torch.randn(m, generator=g) * 0.1,
         "W_dec": torch.randn(m, d_out, generator=g) * 0.3, "b_dec": torch.randn(d_out, generator=g)}
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"expansion_factor": m // d_in, "normalize_decoder": True,
                                               "num_latents": m, "k": k, "multi_topk": False,
                                               "skip_connection": False, "transcode": transcode, "d_in": d_in}))
    return t


def _sparsify_reference(t, x, k, transcode):
    """sparsify's SparseCoder forward, written out: top-k of relu(encoder(x - b_dec))."""
    x_in = x if transcode else x - t["b_dec"]
    pre = torch.relu(x_in @ t["encoder.weight"].T + t["encoder.bias"])
    vals, idx = pre.topk(k, dim=-1)
    return (vals[..., None] * t["W_dec"][idx]).sum(1) + t["b_dec"], vals, idx


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_folder_loads(tmp_path, transcode):
    d_out = 12 if transcode else None
    t = _sparsify_folder(tmp_path, d_out=d_out, transcode=transcode)
    ours = load_dictionary(tmp_path)
    x = torch.randn(10, 16)
    ref, vals, idx = _sparsify_reference(t, x, 4, transcode)
    with torch.no_grad():
        code = ours.encode(x)
        assert torch.equal(code.indices, idx) and torch.allclose(code.values, vals, atol=1e-6)
        assert torch.allclose(ours.decode(code), ref, atol=1e-5)


def test_bad_files_give_clear_errors(make_cfg, tmp_path):
    with pytest.raises(DictionaryFileError, match="holds no dictionary"):
        (tmp_path / "empty").mkdir()
        load_dictionary(tmp_path / "empty")
    ours, _ = _trained(make_cfg, "topk", tmp_path)
    p = save_dictionary(ours, tmp_path / "a")
    (p / "sae_weights.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(DictionaryFileError, match="not a readable safetensors"):
        load_dictionary(p)
    p = save_dictionary(ours, tmp_path / "b")
    (p / "mechscope.json").unlink()
    c = json.loads((p / "cfg.json").read_text())
    (p / "cfg.json").write_text(json.dumps({**c, "d_sae": 99}))
    with pytest.raises(DictionaryFileError, match="'W_enc' has shape .16, 48., expected .16, 99."):
        load_dictionary(p)
    (p / "cfg.json").write_text(json.dumps({**c, "architecture": "temporal"}))
    with pytest.raises(DictionaryFileError, match="'temporal' is not supported"):
        load_dictionary(p)
    (p / "cfg.json").write_text(json.dumps({**c, "normalize_activations": "layer_norm"}))
    with pytest.raises(DictionaryFileError, match="normalize_activations"):
        load_dictionary(p)
    (p / "cfg.json").write_text("{not json")
    with pytest.raises(DictionaryFileError, match="not valid JSON"):
        load_dictionary(p)
    t = _sparsify_folder(tmp_path / "sp")
    save_file({k: v for k, v in t.items() if k != "W_dec"}, str(tmp_path / "sp" / "sae.safetensors"))
    with pytest.raises(DictionaryFileError, match="expected sparsify keys"):
        load_dictionary(tmp_path / "sp")


def test_foreign_weights_carry_their_dictionary_config_and_no_training_config(make_cfg, tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig

    from mechscope.sae.config import TopKConfig

    TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=5)).save_model(tmp_path / "sl")
    sl = load_dictionary(tmp_path / "sl")
    assert sl.cfg == TopKConfig(d_in=16, d_dict=40, k=5) and sl.train_cfg is None
    assert sl.provenance.source == "sae_lens" and sl.provenance.path == str(tmp_path / "sl")
    _sparsify_folder(tmp_path / "sp")
    sp = load_dictionary(tmp_path / "sp")
    assert sp.cfg == TopKConfig(d_in=16, d_dict=40, k=4) and sp.train_cfg is None
    assert sp.provenance.source == "sparsify" and sp.provenance.metadata["num_latents"] == 40
    # saved again by mechscope, it still has no training config: none is made up
    again = load_dictionary(save_dictionary(sp, tmp_path / "sp2"))
    assert again.train_cfg is None and again.cfg == sp.cfg
    assert json.loads((tmp_path / "sp2" / "mechscope.json").read_text())["train"] is None
    with pytest.raises(ValueError, match="no TrainConfig .loaded from sparsify"):
        sp.dead_mask()
    # ours keeps the configs it was trained with
    c = make_cfg(architecture="relu", l1_coeff=2.0)
    ours = load_dictionary(save_dictionary(Run.new(c, tmp_path / "r").model, tmp_path / "ours"))
    assert (ours.cfg, ours.train_cfg) == c.parts() and ours.provenance.source == "mechscope"


def test_format_1_folders_with_one_flat_config_still_load(make_cfg, tmp_path):
    """Folders written before the per-architecture configs hold every architecture's fields."""
    ours, x = _trained(make_cfg, "jumprelu", tmp_path)
    p = save_dictionary(ours, tmp_path / "new")
    meta = json.loads((p / "mechscope.json").read_text())
    flat = {**meta["dictionary"], **meta["train"], "l1_coeff": 5.0, "aux_k": 0, "mp_residual_threshold": 0.0}
    old = {k: v for k, v in meta.items() if k not in ("dictionary", "train")} | {"format": 1, "config": flat}
    (p / "mechscope.json").write_text(json.dumps(old))
    back = load_dictionary(p)
    assert (back.cfg, back.train_cfg) == (ours.cfg, ours.train_cfg)
    with torch.no_grad():
        assert torch.allclose(back(x), ours(x), atol=1e-5)
