"""Model families from local HF folders: logits equal to transformers' own (fp32, 1e-4).

Each family is a tiny random checkpoint made here with transformers (`XForCausalLM(XConfig)`,
weights perturbed so norms and biases are not at their initial values) and saved to a folder
whose name contains the family word, the path TransformerLens would otherwise read as a hub name.
"""

import json

import pytest
import torch

from mechscope.interp.models import HF_FAMILIES, ModelSpecError, load_model

_BASE = dict(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}


def _families():
    import transformers as T

    return {
        "llama3": (T.LlamaConfig, T.LlamaForCausalLM, dict(_BASE, rope_scaling=_LLAMA3_ROPE, rope_theta=5e5)),
        "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(_BASE, sliding_window=None)),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, dict(_BASE)),
        "gemma": (T.GemmaConfig, T.GemmaForCausalLM, dict(_BASE, head_dim=16)),
        "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM,
                   dict(_BASE, head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
                        attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
        "pythia": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM,
                   dict(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.25)),
    }


def _save(tmp_path, name, **overrides):
    config_cls, model_cls, kw = _families()[name]
    torch.manual_seed(0)
    hf = model_cls(config_cls(**{**kw, **overrides})).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / f"tiny-{name}"
    hf.save_pretrained(path)
    return hf, path


_TOKS = torch.randint(0, 120, (2, 40), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(_families()))
def test_family_logits_equal_transformers(tmp_path, name):
    hf, path = _save(tmp_path, name)
    model = load_model(path)
    with torch.no_grad():
        ref = hf(_TOKS).logits
        torch.testing.assert_close(model(_TOKS), ref, atol=1e-4, rtol=1e-4)
        # folding the norms into the weights keeps log-probs
        folded = load_model(path, fold_ln=True)
        torch.testing.assert_close(folded(_TOKS).log_softmax(-1), ref.log_softmax(-1), atol=1e-4, rtol=1e-4)
    assert model.card["architecture"] in HF_FAMILIES and model.dtype == torch.float32


def test_llama3_rope_scaling_is_applied_not_ignored(tmp_path):
    """The scaling changes this model's logits, so equality above is not met by ignoring it."""
    hf, path = _save(tmp_path, "llama3")
    _, plain_path = _save(tmp_path / "plain", "llama3", rope_scaling=None)
    with torch.no_grad():
        scaled, plain = load_model(path)(_TOKS), load_model(plain_path)(_TOKS)
        assert (scaled - plain).abs().max() > 1e-2
        torch.testing.assert_close(scaled, hf(_TOKS).logits, atol=1e-4, rtol=1e-4)


def test_unsupported_architectures_and_rope_types_are_refused(tmp_path):
    _, path = _save(tmp_path, "mistral")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(ModelSpecError) as err:
        load_model(path)
    assert "FalconForCausalLM" in str(err.value) and all(a in str(err.value) for a in HF_FAMILIES)
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4, "original_max_position_embeddings": 16}
    (path / "config.json").write_text(json.dumps({**cfg, "rope_parameters": yarn}))
    with pytest.raises(ModelSpecError, match="rope scaling 'yarn' is not supported; supported: default, llama3"):
        load_model(path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_on_load(tmp_path, dtype):
    """Converted in fp32, then cast: logits agree with fp32 transformers to the dtype's precision,
    and every parameter has the dtype asked for."""
    hf, path = _save(tmp_path, "qwen2")
    model = load_model(path, dtype=dtype)
    want = getattr(torch, dtype)
    assert model.dtype == want and {p.dtype for p in model.module.parameters()} == {want}
    with torch.no_grad():
        ref = hf(_TOKS).logits
        got = model(_TOKS).float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    with pytest.raises(ValueError, match="unsupported model dtype 'int8'; supported: float32, bfloat16, float16"):
        load_model(path, dtype="int8")


def test_head_dim_other_than_d_model_over_n_heads(tmp_path):
    """TL's Llama branch assumes d_head = d_model / n_heads; an explicit head_dim is honoured."""
    hf, path = _save(tmp_path, "llama3", head_dim=8)
    model = load_model(path)
    assert model.d_head == 8 and model.n_heads * model.d_head != model.d_model
    with torch.no_grad():
        torch.testing.assert_close(model(_TOKS), hf(_TOKS).logits, atol=1e-4, rtol=1e-4)
