"""The `Dictionary` protocol: what circuits and apps know about a sparse dictionary.

A dictionary maps an activation ``x`` (at an input site) to a sparse code ``f`` and back to a
reconstruction ``x_hat = decode(encode(x))`` (at an output site: equal to the input site for an
SAE, different for a transcoder). ``directions`` holds the decoder atoms as rows,
``[d_dict, d_out]``; the reconstruction is ``code.dense(d_dict) @ directions + b_dec`` for every
linear-decoder dictionary (SAE, transcoder, codebook, matching pursuit).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from mechscope.kernels.code import SparseCode


# What entry points accept: a `Dictionary`, or a user's ``sae_lens.SAE`` / sparsify ``SparseCoder``,
# which `mechscope.sae.adapters.as_dictionary` wraps (an alias, so run-time checks accept all three)
DictionaryLike = Any


@runtime_checkable
class Dictionary(Protocol):
    d_in: int
    d_dict: int

    def encode(self, x: Float[Tensor, "n d_in"]) -> SparseCode: ...

    def decode(self, code: SparseCode) -> Float[Tensor, "n d_out"]: ...

    @property
    def directions(self) -> Float[Tensor, "d_dict d_out"]: ...
