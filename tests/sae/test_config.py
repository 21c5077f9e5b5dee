import dataclasses

import pytest

from mechscope.sae.config import (ARCHITECTURES, CONFIGS, ReluConfig, RunConfig, TopKConfig, TrainConfig,
                                  dictionary_config, expand_sweep, fields_help)


def _names(cls):
    return [f.name for f in dataclasses.fields(cls)]


def test_valid_config_and_defaults():
    c = RunConfig.from_dict(dict(d_in=8, d_dict=32, k=4))
    assert c.dictionary.d_output == 8 and c.dictionary.effective_aux_k == 4
    assert RunConfig.from_dict(c.to_dict()) == c
    assert dictionary_config(c.dictionary.to_dict()) == c.dictionary
    assert isinstance(c.dictionary, TopKConfig) and c.train == TrainConfig()


@pytest.mark.parametrize("kw, field", [
    (dict(architecture="abstopk"), "architecture"),
    (dict(d_in=0), "d_in"),
    (dict(k=100), "k"),
    (dict(lr=0.0), "lr"),
    (dict(b_dec_init="median"), "b_dec_init"),
    (dict(decay_fraction=1.5), "decay_fraction"),
    (dict(adam_beta2=1.0), "adam_beta2"),
    (dict(d_out=4), "d_out"),
    (dict(site_in="L0.resid_pots"), "site_in"),
    (dict(transcoder=True, architecture="mp"), "architecture"),
    (dict(warmup_steps=5000), "warmup_steps"),
    (dict(architecture="batchtopk", batchtopk_threshold_momentum=1.0), "batchtopk_threshold_momentum"),
    (dict(architecture="jumprelu", jumprelu_bandwidth=0.0), "jumprelu_bandwidth"),
    (dict(architecture="relu", l1_coeff=-1.0), "l1_coeff"),
])
def test_bad_configs_name_the_field(kw, field):
    base = dict(d_in=8, d_dict=32, k=4)
    with pytest.raises(ValueError, match=field):
        RunConfig.from_dict({**base, **kw})


def test_wrong_types_and_unknown_keys():
    with pytest.raises(TypeError, match="k must be int"):
        TopKConfig(d_in=8, d_dict=32, k=4.5)
    with pytest.raises(TypeError, match="normalize must be bool"):
        RunConfig.from_dict(dict(d_in=8, d_dict=32, normalize=1))
    with pytest.raises(ValueError, match="unknown config field.*'kk'"):
        RunConfig.from_dict({"d_in": 8, "d_dict": 32, "kk": 3})
    with pytest.raises(ValueError, match="sweep"):
        RunConfig.from_dict({"d_in": 8, "d_dict": 32, "k": [1, 2]})
    # TOML integers are accepted for float fields, and stored as floats (run-time checked
    # annotations downstream see the declared type)
    lr = RunConfig.from_dict({"d_in": 8, "d_dict": 32, "lr": 1}).train.lr
    assert lr == 1.0 and type(lr) is float
    assert type(TrainConfig(grad_clip=2).grad_clip) is float


def test_flat_table_routes_keys_and_refuses_other_architectures_fields():
    c = RunConfig.from_dict({"architecture": "relu", "d_in": 8, "d_dict": 32, "l1_coeff": 2, "lr": 1e-3,
                             "dead_tokens": 100})
    assert c.dictionary == ReluConfig(d_in=8, d_dict=32, l1_coeff=2.0)
    assert c.train == TrainConfig(lr=1e-3, dead_tokens=100)
    # a key of another architecture: the error names its owner and this architecture's valid keys
    with pytest.raises(ValueError, match=r"aux_k belongs to architecture topk, batchtopk, matryoshka, not relu; "
                                         r"valid fields for relu: .*l1_coeff.*lr"):
        RunConfig.from_dict({"architecture": "relu", "d_in": 8, "d_dict": 32, "aux_k": 3})
    with pytest.raises(ValueError, match="valid fields for mp: .*mp_residual_threshold") as e:
        RunConfig.from_dict({"architecture": "mp", "d_in": 8, "d_dict": 32, "nonsense": 3})
    assert "l1_coeff" not in str(e.value)
    assert c.replace(l1_coeff=3, steps=7).dictionary.l1_coeff == 3.0
    assert c.replace(architecture="topk").dictionary == TopKConfig(d_in=8, d_dict=32)
    with pytest.raises(ValueError, match="aux_k belongs to architecture topk"):
        c.replace(aux_k=3)
    # every field of every architecture is in exactly one place
    for arch, cls in CONFIGS.items():
        assert cls.architecture == arch and set(_names(cls)).isdisjoint(_names(TrainConfig))


def test_expand_sweep_is_the_grid_in_order():
    grid = expand_sweep({"d_in": 8, "d_dict": 32, "k": [2, 4], "lr": [1e-3, 1e-2, 1e-1]})
    assert [(c.dictionary.k, c.train.lr) for c in grid] == [(2, 1e-3), (2, 1e-2), (2, 1e-1), (4, 1e-3),
                                                            (4, 1e-2), (4, 1e-1)]
    with pytest.raises(ValueError, match="d_in cannot be swept"):
        expand_sweep({"d_in": [8, 16], "d_dict": 32})
    with pytest.raises(ValueError, match="empty"):
        expand_sweep({"d_in": 8, "d_dict": 32, "k": []})


def test_sweep_across_architectures_applies_each_key_where_it_belongs():
    grid = expand_sweep({"architecture": ["topk", "relu"], "d_in": 8, "d_dict": 32, "aux_k": 3, "l1_coeff": 2.0})
    assert [type(c.dictionary).__name__ for c in grid] == ["TopKConfig", "ReluConfig"]
    assert grid[0].dictionary.aux_k == 3 and grid[1].dictionary.l1_coeff == 2.0
    with pytest.raises(ValueError, match="jumprelu_bandwidth belongs to architecture jumprelu"):
        expand_sweep({"architecture": ["topk", "relu"], "d_in": 8, "d_dict": 32, "jumprelu_bandwidth": 0.1})


def test_fields_help_lists_every_field_with_text():
    rows = fields_help()
    names = [r[0] for r in rows]
    assert names[:3] == ["architecture", "d_in", "d_dict"] and "lr" in names
    assert all(isinstance(r[3], str) and r[3] for r in rows)
    every = {"architecture", *_names(TrainConfig), *(f for a in ARCHITECTURES for f in _names(CONFIGS[a]))}
    assert set(names) == every and len(names) == len(every)


def test_sites_are_a_sweep_axis_and_site_lists_pair_up():
    grid = expand_sweep({"d_in": 8, "d_dict": 32, "site_in": ["L0.resid_post", "L1.resid_post"], "k": [2, 4]})
    assert [(c.dictionary.site_in, c.dictionary.k) for c in grid] == [
        ("L0.resid_post", 2), ("L0.resid_post", 4), ("L1.resid_post", 2), ("L1.resid_post", 4)]
    pairs = expand_sweep({"d_in": 8, "d_dict": 32, "transcoder": True, "site_in": ["L0.resid_mid", "L1.resid_mid"],
                          "site_out": ["L0.mlp_out", "L1.mlp_out"]})
    assert [(c.dictionary.site_in, c.dictionary.site_out) for c in pairs] == [
        ("L0.resid_mid", "L0.mlp_out"), ("L1.resid_mid", "L1.mlp_out")]
    with pytest.raises(ValueError, match="pair up"):
        expand_sweep({"d_in": 8, "d_dict": 32, "transcoder": True, "site_in": ["L0.resid_mid"],
                      "site_out": ["L0.mlp_out", "L1.mlp_out"]})
