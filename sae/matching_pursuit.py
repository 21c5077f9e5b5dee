"""Matching-pursuit sparse autoencoder (MP-SAE).

Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse Representations with Matching
Pursuit". The encoder is k greedy, residual-guided steps over the unit-norm decoder atoms d_j:

    r⁰ = x − b_dec
    jᵗ = argmax_j <rᵗ⁻¹, d_j>,    zᵗ = <rᵗ⁻¹, d_jᵗ>,    rᵗ = rᵗ⁻¹ − zᵗ d_jᵗ
    x̂ = Σ_t zᵗ d_jᵗ + b_dec = x − rᵏ

Each step explains away what earlier atoms captured, so correlated (e.g. parent/child) atoms are
selected conditionally rather than all at once as in a one-shot encoder. With
``mp_residual_threshold = τ > 0`` a row stops as soon as ``||rᵗ|| < τ``, so L0 adapts per input.
Training minimises ||x − x̂||²; gradients reach the atoms through the selected zᵗ and d_jᵗ.

Memory: the scores ``r W_decᵀ`` are formed one step at a time without gradient; the pursuit keeps
only the ``[n, k]`` selections and the ``[n, d]`` residual (autograd keeps the k gathered atoms
and residuals, O(k·n·d), never O(k·n·d_dict)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.kernels import SparseCode
from mechscope.sae.base import LossOutput, SparseDictionary, mse
from mechscope.sae.config import MatchingPursuitConfig


class MatchingPursuitSAE(SparseDictionary):
    """Saved, as SAELens' ``MatchingPursuitSAE`` reads it, with unit atoms ``W_dec`` and
    ``b_dec / s`` in raw units. The pursuit is positively homogeneous, so on raw input it selects
    the same atoms with coefficients ``z / s`` (SAELens' codes); `unfold_scales` puts ``s`` back
    when mechscope loads the folder, so its codes are unchanged by a round trip.

    SAELens' pursuit (``max_iterations = k``, ``stop_on_duplicate_support = False``,
    ``residual_threshold = τ / s``) equals this one whenever every step's best score is positive:
    it clips scores and coefficients at 0, this one keeps a negative best coefficient; with
    ``τ > 0`` it also takes a first step on inputs already within τ of ``b_dec``."""

    architecture = "mp"
    config_class = MatchingPursuitConfig
    saelens_architecture = "matching_pursuit"
    unit_norm_export = "atoms"

    def _scale(self) -> float:
        s_in, s_out = float(self.scale_in), float(self.scale_out)
        if abs(s_in - s_out) > 1e-6 * max(s_in, s_out):
            raise ValueError(f"a matching-pursuit SAE reconstructs its input: scale_in={s_in} and "
                             f"scale_out={s_out} must be equal to fold them into the saved weights")
        return s_in

    @torch.no_grad()
    def folded_weights(self) -> dict[str, Tensor]:
        return {"W_dec": self.atoms().detach().clone(), "b_dec": self.b_dec.detach() / self._scale()}

    @torch.no_grad()
    def load_folded(self, t: dict[str, Tensor]) -> None:
        super().load_folded(t)
        self._folded = "scale_in" not in t
        if not self._folded:  # mechscope folders written before the SAELens export: unfolded
            self.scale_in.copy_(t["scale_in"])
            self.scale_out.copy_(t["scale_out"])

    @torch.no_grad()
    def unfold_scales(self, s_in: float, s_out: float) -> None:
        if getattr(self, "_folded", False):
            self.scale_in.fill_(s_in)
            self.scale_out.fill_(s_out)
            self.b_dec.mul_(s_out)
            self._folded = False

    def saelens_config(self) -> dict[str, object]:
        return {"residual_threshold": self.cfg.mp_residual_threshold / self._scale(),
                "max_iterations": self.cfg.k, "stop_on_duplicate_support": False}

    def atoms(self) -> Tensor:
        return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def pursuit(self, x_c: Tensor, steps: int | None = None,
                residual_threshold: float | int | None = None) -> tuple[SparseCode, Tensor]:
        """(code over the unit atoms, final residual) of ``steps`` (default k) MP steps."""
        steps = self.cfg.k if steps is None else steps
        tau = self.cfg.mp_residual_threshold if residual_threshold is None else residual_threshold
        atoms = self.atoms()
        r = x_c
        n = x_c.shape[0]
        indices = torch.zeros(n, steps, dtype=torch.int64, device=x_c.device)
        active = torch.ones(n, dtype=torch.bool, device=x_c.device)
        vals = []
        for t in range(steps):
            with torch.no_grad():
                if tau > 0:
                    active = active & (r.norm(dim=-1) >= tau)  # not in place: z below saved it for backward
                j = (r @ atoms.T).argmax(-1)
            a = atoms[j]
            z = (r * a).sum(-1) * active
            r = r - z[:, None] * a
            vals.append(z)
            indices[:, t] = j
        values = torch.stack(vals, 1) if vals else x_c.new_zeros(n, 0)
        return SparseCode(values, indices), r

    def _encode(self, x: Tensor) -> SparseCode:
        return self.pursuit(self._centred(x))[0]

    def _decode(self, code: SparseCode) -> Tensor:
        # the pursuit's coefficients are over the unit-normalised atoms
        return SparseCode.dense(code, self.d_dict).to(self.W_dec.dtype) @ self.atoms() + self.b_dec

    @property
    def directions(self) -> Tensor:
        return self.atoms() / self.scale_out

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        x_c = self._centred(x_in)
        code, r = self.pursuit(x_c)
        x_hat = x_c - r + (self.b_dec if self.b_dec_to_input else 0)
        rec = mse(x_hat, x_out)
        return LossOutput(rec, x_hat, SparseCode(code.values.detach(), code.indices), {"mse": rec.detach()})
