"""Matryoshka batch-top-k SAE: nested prefixes of the dictionary each reconstruct the input.

Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features with Matryoshka
Sparse Autoencoders"; Nabeshima 2024, "Matryoshka Sparse Autoencoders". With prefix widths
``m_1 < m_2 < ... < m_L = d_dict`` and the batch-top-k code f (`mechscope.sae.topk`):

    x̂_{≤m} = Σ_{i < m} f_i W_dec,i + b_dec,      L = Σ_{l=1..L} ||x − x̂_{≤m_l}||²  (+ aux-k)

The first latents must reconstruct x on their own, so general ("parent") features settle in the
early prefixes, and a child latent cannot absorb its parent's direction without hurting the
inner losses (feature absorption, Chanin et al. 2024). Inference is batch-top-k's: a global
threshold, exported — as SAELens exports ``MatryoshkaBatchTopKTrainingSAE`` — as a JumpReLU
with every latent at that threshold.
"""

from __future__ import annotations

from torch import Tensor

from mechscope.kernels import SparseCode, sparse_decode
from mechscope.sae.base import LossOutput, mse
from mechscope.sae.config import MatryoshkaConfig
from mechscope.sae.topk import BatchTopKSAE


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    config_class = MatryoshkaConfig
    saelens_architecture = "jumprelu"
    saelens_reads = ("matryoshka_batchtopk",)

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        out = super().loss(x_in, x_out, step)  # full-width MSE + aux-k, threshold update
        code, terms, loss = out.code, dict(out.terms), out.loss
        for w in self.cfg.widths[:-1]:
            inner = SparseCode(code.values * (code.indices < w), code.indices)
            rec = mse(sparse_decode(inner, self.W_dec, self.b_dec), x_out)
            terms[f"mse_{w}"] = rec.detach()
            loss = loss + rec
        return LossOutput(loss, out.x_hat, code, terms)
