import pytest

from mechscope.sae.config import TrainConfig, expand_sweep, fields_help


def test_valid_config_and_defaults():
    c = TrainConfig(d_in=8, d_dict=32, k=4)
    assert c.d_output == 8 and c.effective_aux_k == 4
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kw, field", [
    (dict(architecture="gated"), "architecture"),
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
])
def test_bad_configs_name_the_field(kw, field):
    base = dict(d_in=8, d_dict=32, k=4)
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{**base, **kw})


def test_wrong_types_and_unknown_keys():
    with pytest.raises(TypeError, match="k must be int"):
        TrainConfig(d_in=8, d_dict=32, k=4.5)
    with pytest.raises(TypeError, match="normalize must be bool"):
        TrainConfig(d_in=8, d_dict=32, normalize=1)
    with pytest.raises(ValueError, match="unknown config field.*'kk'"):
        TrainConfig.from_dict({"d_in": 8, "d_dict": 32, "kk": 3})
    with pytest.raises(ValueError, match="sweep"):
        TrainConfig.from_dict({"d_in": 8, "d_dict": 32, "k": [1, 2]})
    # TOML integers are accepted for float fields, and stored as floats (run-time checked
    # annotations downstream see the declared type)
    lr = TrainConfig.from_dict({"d_in": 8, "d_dict": 32, "lr": 1}).lr
    assert lr == 1.0 and type(lr) is float
    assert type(TrainConfig(d_in=8, d_dict=32, grad_clip=2).grad_clip) is float


def test_expand_sweep_is_the_grid_in_order():
    grid = expand_sweep({"d_in": 8, "d_dict": 32, "k": [2, 4], "lr": [1e-3, 1e-2, 1e-1]})
    assert [(c.k, c.lr) for c in grid] == [(2, 1e-3), (2, 1e-2), (2, 1e-1), (4, 1e-3), (4, 1e-2), (4, 1e-1)]
    with pytest.raises(ValueError, match="d_in cannot be swept"):
        expand_sweep({"d_in": [8, 16], "d_dict": 32})
    with pytest.raises(ValueError, match="empty"):
        expand_sweep({"d_in": 8, "d_dict": 32, "k": []})


def test_fields_help_lists_every_field_with_text():
    rows = fields_help()
    names = [r[0] for r in rows]
    assert names[:3] == ["architecture", "d_in", "d_dict"] and "lr" in names
    assert all(isinstance(r[3], str) and r[3] for r in rows)
