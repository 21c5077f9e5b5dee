"""Top-k and batch-top-k sparse autoencoders, with the aux-k loss against dead latents.

Top-k (Makhzani & Frey 2013; Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):

    f = topk_k(relu((x − b_dec) W_encᵀ + b_enc)),    x̂ = f W_dec + b_dec,    L = ||x − x̂||²

Batch-top-k (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"): during training the n·k
largest activations of the whole batch are kept, so sparsity adapts per row with mean L0 = k. At
inference a row keeps the activations above a threshold θ. Each training batch's selection is
exactly "keep what exceeds θ_b", θ_b = the smallest activation kept (the n·k-th largest of the
batch), so the inference θ should be the θ_b of the *final* weights. An exponential moving
average over the whole run lags behind θ_b while it drifts (it falls as the encoder trains), and
the exported SAE came out sparser than it trained (L0 12 for k = 16). So θ follows an EMA of θ_b
until the last ``batchtopk_threshold_window`` steps (default a tenth of the run, when the learning
rate decays to 0 and the weights settle), and is then the plain mean of θ_b over that window
(the mean of per-batch quantiles of n·k ≫ 1 kept values ≈ the quantile over all those rows). Rows are capped
at ``batchtopk_max_per_row`` candidates (default 4k) taken with the top-k kernel; the batch
selection is exact whenever no row would have kept more than the cap.

Aux-k (Gao et al. §A.2): with residual ``e = x − x̂`` (no gradient) and the ``k_aux`` largest
pre-activations among dead latents, ``ê = f_dead W_dec[dead]``,
``L_aux = ||e − ê||² / ||e − ē||²``, with the raw (un-ReLU'd) pre-activations so that latents
whose pre-activations are all negative still get a gradient (as sparsify and SAELens do); it revives latents that have not fired for
``dead_tokens`` tokens by teaching them to explain what the live ones miss.

Every encoder forward/backward goes through `mechscope.kernels.topk_encode` and every decoder
through `mechscope.kernels.sparse_decode`, whose backwards touch only the selected latents.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mechscope.kernels import SparseCode, sparse_decode, topk_encode
from mechscope.sae.base import LossOutput, SparseDictionary, mse
from mechscope.sae.config import BatchTopKConfig, DictionaryConfig, TopKConfig, TrainConfig


class _Encoder(SparseDictionary):
    """Adds ``W_enc [d_dict, d_in]`` and ``b_enc [d_dict]``; W_enc starts as W_dec (SAEs).

    Saved as SAELens does: ``W_enc`` transposed, ``[d_in, d_sae]``, times ``s_in``."""

    def __init__(self, cfg: DictionaryConfig, train: TrainConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        g = generator if generator is not None else torch.Generator().manual_seed(train.seed if train else 0)
        super().__init__(cfg, train, g)
        if self.d_in == self.d_out:
            w = self.W_dec.detach().clone()
        else:
            w = torch.randn(self.d_dict, self.d_in, generator=g) / self.d_in**0.5
        self.W_enc = nn.Parameter(w)
        self.b_enc = nn.Parameter(torch.zeros(self.d_dict))

    def pre_activations(self, x: Tensor) -> Tensor:
        """Dense ``(x̃ − b_dec) W_encᵀ + b_enc`` on normalised input (for analysis and tests)."""
        return self._centred(x) @ self.W_enc.T + self.b_enc

    @torch.no_grad()
    def folded_weights(self) -> dict[str, Tensor]:
        return {**super().folded_weights(), "W_enc": (self.W_enc * float(self.scale_in)).T,
                "b_enc": self.b_enc.clone()}

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super().weight_shapes(), "W_enc": (self.d_in, self.d_dict), "b_enc": (self.d_dict,)}

    @torch.no_grad()
    def load_folded(self, t: dict[str, Tensor]) -> None:
        super().load_folded(t)
        self.W_enc.copy_(t["W_enc"].T)
        self.b_enc.copy_(t["b_enc"])


class _AuxK:
    def aux_k_loss(self, x_c: Tensor, residual: Tensor) -> Tensor:
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0 or self.cfg.aux_coeff == 0:
            return residual.new_zeros(())
        idx = dead.nonzero().squeeze(1)
        k_aux = min(self.cfg.effective_aux_k, n_dead)
        # raw pre-activations, no ReLU (sparsify, SAELens): a dead latent's pre-activations are
        # mostly negative, and through a ReLU it would get no gradient and stay dead
        pre = x_c.detach() @ self.W_enc[idx].T + self.b_enc[idx]
        top = pre.topk(k_aux, dim=-1)
        e_hat = sparse_decode(SparseCode(top.values, top.indices), self.W_dec[idx],
                              residual.new_zeros(self.d_out))
        var = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        # fewer dead latents than k_aux: a proportionally smaller loss (SAELens, sparsify)
        scale = min(n_dead / self.cfg.effective_aux_k, 1.0)
        return self.cfg.aux_coeff * scale * mse(e_hat, residual) / var


class TopKSAE(_AuxK, _Encoder):
    architecture = "topk"
    config_class = TopKConfig
    saelens_architecture = "topk"
    saelens_reads = ("topk",)
    unit_norm_export = "uniform"

    def saelens_config(self) -> dict[str, object]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    def _encode(self, x: Tensor) -> SparseCode:
        return topk_encode(self._centred(x), self.W_enc, self.b_enc, self.cfg.k)

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        x_c = self._centred(x_in)
        code = topk_encode(x_c, self.W_enc, self.b_enc, self.cfg.k)
        x_hat = sparse_decode(code, self.W_dec, self.b_dec)
        rec = mse(x_hat, x_out)
        aux = self.aux_k_loss(x_c, x_out - x_hat.detach())
        return LossOutput(rec + aux, x_hat, code, {"mse": rec.detach(), "aux": aux.detach()})


class BatchTopKSAE(_AuxK, _Encoder):
    """Saved, as SAELens does, as a JumpReLU whose every latent has the global threshold."""

    architecture = "batchtopk"
    config_class = BatchTopKConfig
    saelens_architecture = "jumprelu"
    saelens_reads = ("batchtopk",)  # SAELens' training-time name; its inference form is a JumpReLU
    saelens_transcoder = "jumprelu_transcoder"
    unit_norm_export = "uniform"

    def __init__(self, cfg: DictionaryConfig, train: TrainConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, train, generator)
        # < 0 until the first training batch has set it
        self.register_buffer("threshold", torch.full((), -1.0))
        # sum and count of θ_b over the final window (buffers: a resumed run continues them)
        self.register_buffer("final_threshold_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("final_threshold_count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def folded_weights(self) -> dict[str, Tensor]:
        return {**super().folded_weights(), "threshold": self.threshold.clamp_min(0).expand(self.d_dict).clone()}

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super().weight_shapes(), "threshold": (self.d_dict,)}

    @torch.no_grad()
    def load_folded(self, t: dict[str, Tensor]) -> None:
        super().load_folded(t)
        self.threshold.fill_(float(t["threshold"].max()))

    @classmethod
    def from_saelens_tensors(cls, t: dict[str, Tensor]) -> dict[str, Tensor]:
        if "threshold" not in t and "b_enc" in t:  # a training checkpoint: no threshold estimated yet
            t = {**t, "threshold": torch.full_like(t["b_enc"], -1.0)}
        return t

    @property
    def max_per_row(self) -> int:
        return min(self.d_dict, self.cfg.batchtopk_max_per_row or 4 * self.cfg.k)

    def _encode(self, x: Tensor) -> SparseCode:
        cand = topk_encode(self._centred(x), self.W_enc, self.b_enc, self.max_per_row)
        keep = cand.values > self.threshold.clamp_min(0)
        return SparseCode(cand.values * keep, cand.indices)

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        x_c = self._centred(x_in)
        cand = topk_encode(x_c, self.W_enc, self.b_enc, self.max_per_row)
        flat = cand.values.detach().flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(min(x_in.shape[0] * self.cfg.k, flat.numel())).indices] = True
        keep &= flat > 0
        self._update_threshold(flat[keep], step)
        code = SparseCode(cand.values * keep.view_as(cand.values), cand.indices)
        x_hat = sparse_decode(code, self.W_dec, self.b_dec)
        rec = mse(x_hat, x_out)
        aux = self.aux_k_loss(x_c, x_out - x_hat.detach())
        return LossOutput(rec + aux, x_hat, code,
                          {"mse": rec.detach(), "aux": aux.detach(), "threshold": self.threshold.clone()})

    def in_final_window(self, step: int) -> bool:
        steps = self.training_config.steps
        window = self.cfg.batchtopk_threshold_window or max(1, steps // 10)
        return step >= steps - window

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor, step: int) -> None:
        if kept.numel() == 0:
            return
        lo = kept.min()
        if self.train_cfg is not None and self.in_final_window(step):
            self.final_threshold_sum += lo.double()
            self.final_threshold_count += 1
            self.threshold.copy_(self.final_threshold_sum / self.final_threshold_count)
        elif self.threshold < 0:
            self.threshold.copy_(lo)
        else:
            m = self.cfg.batchtopk_threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * lo)
