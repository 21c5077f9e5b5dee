"""JumpReLU sparse autoencoder with straight-through pseudo-derivatives.

Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
Sparse Autoencoders". With pre-activations ``z = (x − b_dec) W_encᵀ + b_enc`` and learned
per-latent thresholds ``θ ≥ 0``:

    f = JumpReLU_θ(z) = z · H(z − θ),    L = ||x − x̂||² + λ Σ_i H(z_i − θ_i)

H has zero derivative almost everywhere, so θ gets its gradient from a kernel-density
estimate (rectangle kernel K(u) = 1[|u| < ½], bandwidth ε):

    ∂f/∂θ   := −(θ/ε) K((z − θ)/ε)          ∂H(z − θ)/∂θ := −(1/ε) K((z − θ)/ε)

while ∂f/∂z = H(z − θ) as usual and the L0 term sends no gradient to z.

θ is a parameter in activation units, projected onto θ ≥ 0 after every step, as in SAELens 6
(not log θ as in the paper's code): Adam moves a parameter by about ``lr`` per step, so under
a log parametrisation a threshold that starts at 1e-3 moves by a factor of only ``e^(lr·steps)``
and never reaches the O(1) scale of normalised pre-activations — the SAE stays dense whatever
λ is. Defaults follow SAELens (θ₀ = 0.01, ε = 0.05, λ = 1 on inputs with E||x||² = d). θ has
its own learning rate, ``jumprelu_threshold_lr_scale`` times the schedule's (1 in SAELens, whose
runs are 10⁴–10⁵ steps): normalised pre-activations are O(1), so θ needs ``lr·scale·steps ≳ 1``
to reach them, and a CPU run of a few hundred steps needs a scale of ~10.

Sparsity loss: ``step`` is λ·L0 as above; ``quadratic`` (Gemma Scope 2, SAELens) is
``λ · (2/T)(L0 − T)²`` per row, which drives the L0 to a target T instead of trading it against
the reconstruction. λ ramps linearly from 0 over ``l0_warmup_steps``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mechscope.kernels import SparseCode
from mechscope.sae.base import LossOutput, mse
from mechscope.sae.config import DictionaryConfig, JumpReluConfig, TrainConfig
from mechscope.sae.topk import _Encoder


# W_enc starts as W_dec (unit rows) times 2·d_in / d_dict. With W_enc = W_dec the normalised
# pre-activations are ~N(0, 1) and the latents that fire at θ₀ are those aligned with x: their
# decoder rows add up coherently, x̂ ≈ (d_dict / 2·d_in)·x, an 8x-too-large output at
# d_dict = 16·d_in (FVU ~10 on the zoo model) that a short run never undid. The scale makes the
# first reconstruction about x itself (SAELens' decoder_init_norm = 0.1 is this scale at 20·d_in).
def _encoder_init_scale(d_in: int, d_dict: int) -> float:
    return min(1.0, 2 * d_in / d_dict)


def _rect(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, theta = ctx.saved_tensors
        gz = g * (z > theta)
        gt = (g * -(theta / ctx.eps) * _rect((z - theta) / ctx.eps)).sum(0)
        return gz, gt, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, theta = ctx.saved_tensors
        gt = (g * -(1.0 / ctx.eps) * _rect((z - theta) / ctx.eps)).sum(0)
        return None, gt, None


class JumpReluSAE(_Encoder):
    """Saved with SAELens' ``threshold [d_sae]`` (older SAELens folders: ``log_threshold``)."""

    architecture = "jumprelu"
    config_class = JumpReluConfig
    saelens_architecture = "jumprelu"
    saelens_reads = ("jumprelu",)
    saelens_transcoder = "jumprelu_transcoder"
    unit_norm_export = "any"

    def __init__(self, cfg: DictionaryConfig, train: TrainConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, train, generator)
        with torch.no_grad():
            self.W_enc.mul_(_encoder_init_scale(self.d_in, self.d_dict))
        self.threshold = nn.Parameter(torch.full((self.d_dict,), cfg.jumprelu_init_threshold))

    def param_groups(self) -> list[dict]:
        rest = [p for n, p in self.named_parameters() if n != "threshold"]
        return [{"params": rest, "lr_scale": 1.0},
                {"params": [self.threshold], "lr_scale": self.cfg.jumprelu_threshold_lr_scale}]

    @torch.no_grad()
    def after_step(self, x_in: Tensor, x_out: Tensor, generator: torch.Generator) -> None:
        # projected, not clamped in the graph: a clamp would zero the gradient of a latent at 0
        self.threshold.clamp_(min=0.0)

    def l0_coeff(self, step: int) -> float:
        w = self.cfg.l0_warmup_steps
        return self.cfg.l0_coeff * (min(1.0, step / w) if w else 1.0)

    @torch.no_grad()
    def folded_weights(self) -> dict[str, Tensor]:
        return {**super().folded_weights(), "threshold": self.threshold.detach().clone()}

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super().weight_shapes(), "threshold": (self.d_dict,)}

    @torch.no_grad()
    def load_folded(self, t: dict[str, Tensor]) -> None:
        super().load_folded(t)
        self.threshold.copy_(t["threshold"])

    @classmethod
    def from_saelens_tensors(cls, t: dict[str, Tensor]) -> dict[str, Tensor]:
        if "log_threshold" in t:  # older SAELens checkpoints
            t = {k: v for k, v in t.items() if k != "log_threshold"} | {"threshold": t["log_threshold"].exp()}
        return t

    def _encode(self, x: Tensor) -> SparseCode:
        z = self.pre_activations(x)
        return SparseCode.from_dense(z * (z > self.threshold))

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        z = self.pre_activations(x_in)
        theta, eps = self.threshold, self.cfg.jumprelu_bandwidth
        f = _JumpReLU.apply(z, theta, eps)
        x_hat = f @ self.W_dec + self.b_dec
        rec = mse(x_hat, x_out)
        l0_rows = _Step.apply(z, theta, eps).sum(-1)
        if self.cfg.jumprelu_sparsity_loss == "quadratic":
            target = self.cfg.jumprelu_target_l0
            penalty = (2 / target * (l0_rows - target).pow(2)).mean()
        else:
            penalty = l0_rows.mean()
        loss = rec + self.l0_coeff(step) * penalty
        return LossOutput(loss, x_hat, SparseCode.from_dense(f.detach()),
                          {"mse": rec.detach(), "l0_penalty": penalty.detach()})
