"""Gated sparse autoencoder (Rajamanoharan et al. 2024, "Improving Dictionary Learning with
Gated Sparse Autoencoders").

Which latents fire and how strongly are estimated by two paths sharing ``W_enc`` (up to a
per-latent rescaling ``exp(r_mag)``):

    π_gate = (x − b_dec) W_encᵀ + b_gate,      π_mag = (x − b_dec) (exp(r_mag) ⊙ W_enc)ᵀ + b_mag
    f = 1[π_gate > 0] ⊙ relu(π_mag),            x̂ = f W_dec + b_dec

    L = ||x − x̂||² + λ Σ_i relu(π_gate)_i ||W_dec,i|| + ||x − (relu(π_gate) W̄_dec + b̄_dec)||²

The L1 penalty acts on the gate only, so it does not shrink the magnitudes (the shrinkage of a
ReLU SAE). The Heaviside step passes no gradient, so the gate path is trained by the auxiliary
reconstruction through a frozen copy of the decoder (W̄, b̄: no gradient, as in the paper). As in
SAELens the L1 term is weighted by the decoder norms and the decoder is left unconstrained.
Saved as SAELens' ``gated`` (``W_enc, b_gate, b_mag, r_mag, W_dec, b_dec``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mechscope.kernels import SparseCode
from mechscope.sae.base import LossOutput, mse
from mechscope.sae.config import DictionaryConfig, GatedConfig, TrainConfig
from mechscope.sae.topk import _Encoder


class GatedSAE(_Encoder):
    """``b_enc`` (of `_Encoder`) is the gate bias ``b_gate``."""

    architecture = "gated"
    config_class = GatedConfig
    unit_norm_decoder = False
    saelens_architecture = "gated"
    saelens_reads = ("gated",)

    def __init__(self, cfg: DictionaryConfig, train: TrainConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, train, generator)
        self.b_mag = nn.Parameter(torch.zeros(self.d_dict))
        self.r_mag = nn.Parameter(torch.zeros(self.d_dict))

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._centred(x) @ self.W_enc.T
        return pre + self.b_enc, pre * self.r_mag.exp() + self.b_mag

    def _dense(self, x: Tensor) -> Tensor:
        gate, mag = self._paths(x)
        return (gate > 0) * mag.relu()

    def _encode(self, x: Tensor) -> SparseCode:
        return SparseCode.from_dense(self._dense(x))

    def l1_coeff(self, step: int) -> float:
        w = self.cfg.l1_warmup_steps
        return self.cfg.l1_coeff * (min(1.0, step / w) if w else 1.0)

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        gate, mag = self._paths(x_in)
        f = (gate > 0) * mag.relu()
        x_hat = f @ self.W_dec + self.b_dec
        rec = mse(x_hat, x_out)
        g = gate.relu()
        l1 = (g * self.W_dec.norm(dim=-1)).sum(-1).mean()
        aux = mse(g @ self.W_dec.detach() + self.b_dec.detach(), x_out)
        loss = rec + self.l1_coeff(step) * l1 + aux
        return LossOutput(loss, x_hat, SparseCode.from_dense(f.detach()),
                          {"mse": rec.detach(), "l1": l1.detach(), "aux": aux.detach()})

    @torch.no_grad()
    def folded_weights(self) -> dict[str, Tensor]:
        t = super().folded_weights()
        return {**{k: v for k, v in t.items() if k != "b_enc"}, "b_gate": t["b_enc"],
                "b_mag": self.b_mag.clone(), "r_mag": self.r_mag.clone()}

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        t = super().weight_shapes()
        del t["b_enc"]
        return {**t, "b_gate": (self.d_dict,), "b_mag": (self.d_dict,), "r_mag": (self.d_dict,)}

    @torch.no_grad()
    def load_folded(self, t: dict[str, Tensor]) -> None:
        super().load_folded({**t, "b_enc": t["b_gate"]})
        self.b_mag.copy_(t["b_mag"])
        self.r_mag.copy_(t["r_mag"])
