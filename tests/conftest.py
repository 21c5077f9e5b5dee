"""Shared fixtures: tiny random TransformerLens models and locally saved HF checkpoints.

Everything here is offline and CPU-only; the models are small enough that a forward pass takes
milliseconds.
"""

from __future__ import annotations

import pytest
import torch

# one intra-op thread per test process: tiny ops are faster without thread sync, and
# `pytest -n 2` (pytest-xdist, see pyproject) uses the second core for a second worker
torch.set_num_threads(1)

TINY_GPT2 = dict(n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=100,
                 act_fn="gelu_new", normalization_type="LN")
TINY_LLAMA = dict(n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_mlp=48, d_vocab=100,
                  act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                  rotary_dim=8, gated_mlp=True, final_rms=True, n_key_value_heads=2)


@pytest.fixture(scope="session")
def tiny_gpt2():
    from mechscope.interp.models import Model

    return Model.from_config(TINY_GPT2, name="tiny-gpt2", seed=0)


@pytest.fixture(scope="session")
def induction_model():
    """The zoo's attention-only induction model (shipped in the package)."""
    from mechscope.interp.models import load_model

    return load_model("attn-only-induction")


@pytest.fixture(scope="session")
def tiny_llama():
    from mechscope.interp.models import Model

    return Model.from_config(TINY_LLAMA, name="tiny-llama", seed=0)


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_model(request, tiny_gpt2, tiny_llama):
    return tiny_gpt2 if request.param == "gpt2" else tiny_llama


@pytest.fixture
def tokens():
    return torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def hf_gpt2_dir(tmp_path_factory):
    """A transformers GPT2LMHeadModel built from a small config, saved to a folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=120, n_positions=64, n_embd=48, n_layer=2, n_head=4))
    path = tmp_path_factory.mktemp("hf-gpt2")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory):
    """A transformers LlamaForCausalLM (grouped-query attention) saved to a folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    path = tmp_path_factory.mktemp("hf-llama")
    model.save_pretrained(path)
    return path
