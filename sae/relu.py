"""ReLU + L1 ("standard") sparse autoencoder, as in Anthropic's April-2024 update.

    f = relu((x − b_dec) W_encᵀ + b_enc),    x̂ = f W_dec + b_dec
    L = ||x − x̂||² + λ(t) Σ_i f_i ||W_dec,i||

(Bricken et al. 2023, "Towards Monosemanticity"; Conerly et al. 2024, "Circuits Updates — April
2024"). Weighting the L1 term by the decoder norms removes the incentive to shrink f and grow
W_dec, so the decoder is left unconstrained (``unit_norm_decoder = False``); λ ramps linearly
from 0 over ``l1_warmup_steps`` so that early training is not dominated by the penalty.

Initialisation (SAELens' ``decoder_init_norm = 0.1`` for standard SAEs; Conerly et al.): decoder
rows of norm 0.1 and ``W_enc = W_dec``. With unit rows and d_dict/d_in = 16 about half the latents
fire at init and the first reconstruction is ~8x the input (FVU ~20 on the zoo model): the first
hundred steps then only shrink the weights, and a short run never recovers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.kernels import SparseCode
from mechscope.sae.base import LossOutput, mse
from mechscope.sae.config import ReluConfig
from mechscope.sae.topk import _Encoder


class ReluSAE(_Encoder):
    architecture = "relu"
    config_class = ReluConfig
    unit_norm_decoder = False
    saelens_architecture = "standard"
    saelens_reads = ("standard",)
    saelens_transcoder = "transcoder"
    unit_norm_export = "any"
    decoder_init_norm = 0.1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.W_dec.mul_(self.decoder_init_norm)
            if self.d_in == self.d_out:
                self.W_enc.copy_(self.W_dec)

    def _dense(self, x: Tensor) -> Tensor:
        return self.pre_activations(x).relu()

    def _encode(self, x: Tensor) -> SparseCode:
        return SparseCode.from_dense(self._dense(x))

    def l1_coeff(self, step: int) -> float:
        w = self.cfg.l1_warmup_steps
        return self.cfg.l1_coeff * (min(1.0, step / w) if w else 1.0)

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        f = self._dense(x_in)
        x_hat = f @ self.W_dec + self.b_dec
        rec = mse(x_hat, x_out)
        l1 = (f * self.W_dec.norm(dim=-1)).sum(-1).mean()
        loss = rec + self.l1_coeff(step) * l1
        code = SparseCode.from_dense(f.detach())
        return LossOutput(loss, x_hat, code, {"mse": rec.detach(), "l1": l1.detach()})
