"""Test helpers for tests/apps: a tiny ReLU dictionary and a tiny byte-level BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from mechscope.kernels.code import SparseCode

NASTY = ("<script>alert(1)</script>", '"><img src=x onerror=alert(2)>')


class TinySAE:
    """ReLU SAE ``f = relu(x W_encᵀ + b_enc)``, ``x̂ = f W_dec + b_dec`` (project layout)."""

    def __init__(self, d_in: int, d_dict: int, seed: int = 0, bias: float = -0.3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.d_in, self.d_dict = d_in, d_dict
        self.W_enc = torch.randn(d_dict, d_in, generator=g) / d_in ** 0.5
        self.b_enc = torch.full((d_dict,), bias)
        self.W_dec = torch.randn(d_dict, d_in, generator=g)
        self.b_dec = torch.zeros(d_in)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc.T + self.b_enc)

    def encode(self, x: torch.Tensor) -> SparseCode:
        return SparseCode.from_dense(self.pre(x), k=self.d_dict)

    def decode(self, code: SparseCode) -> torch.Tensor:
        return code.dense(self.d_dict) @ self.W_dec + self.b_dec

    @property
    def directions(self) -> torch.Tensor:
        return self.W_dec


def nasty_tokenizer(folder: Path):
    """A byte-level BPE (``tokenizers``) whose vocabulary holds HTML/JS injection strings as
    whole tokens, saved to ``folder`` and loaded back through transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the cat sat on the mat and the dog ran to the park"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|bos|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|bos|>")
    fast.add_tokens(list(NASTY))
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
