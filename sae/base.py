"""`SparseDictionary`: what every trainable mechscope dictionary shares.

Shared state: decoder atoms ``W_dec [d_dict, d_out]`` and bias ``b_dec [d_out]``, the activation
scales ``scale_in``/``scale_out`` and a per-latent count of tokens since the latent last fired.

Normalisation (Gao et al. 2024, Anthropic April-2024 update). The dictionary works on
``x̃ = s_in · x`` with ``s_in = sqrt(d_in / E||x||²)`` so that ``E||x̃||² = d_in`` (same for the
output site), which makes hyper-parameters transfer across layers and models. The public
`encode` / `decode` take and return raw activations:

    encode(x) = code of x̃,      decode(f) = (f W_dec + b_dec) / s_out

so ``directions = W_dec / s_out`` satisfies the `Dictionary` identity ``decode(f) = f ·
directions + b_dec / s_out``; `mechscope.sae.io` folds the scales into saved weights.

Decoder constraint. With ``unit_norm_decoder`` the rows of ``W_dec`` are renormalised after every
optimiser step and, before it, the gradient component parallel to each row is removed,
``g_i ← g_i − <g_i, w_i> w_i`` (Bricken et al. 2023), so Adam moves along the sphere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from typing import ClassVar, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechscope.kernels import SparseCode, sparse_decode
from mechscope.sae.config import DictionaryConfig, TrainConfig


class LossOutput(NamedTuple):
    """``loss`` to minimise; ``x_hat`` and ``code`` in normalised units; named ``terms``."""

    loss: Tensor
    x_hat: Tensor
    code: SparseCode
    terms: dict[str, Tensor]


class SparseDictionary(nn.Module):
    """Base class; subclasses implement ``_encode`` and ``loss`` (both on normalised inputs).

    ``cfg`` is the architecture's `DictionaryConfig`; ``train_cfg`` the `TrainConfig` it was (or
    is being) trained with, None for weights loaded from SAELens / sparsify; ``provenance`` says
    where loaded weights came from (`mechscope.sae.io.Provenance`, None when built here).

    Saving and loading: `folded_weights` / `weight_shapes` / `load_folded` are the weights in raw
    units with SAELens key names, and ``saelens_architecture`` the name SAELens reads them under
    (None: no SAELens cfg.json); ``saelens_reads`` the SAELens names it loads; each architecture
    adds its own tensors.
    """

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[DictionaryConfig]] = DictionaryConfig
    unit_norm_decoder: ClassVar[bool] = True
    saelens_architecture: ClassVar[str | None] = None  # written to cfg.json
    saelens_reads: ClassVar[tuple[str, ...]] = ()  # SAELens cfg.json architectures loaded as this class
    saelens_transcoder: ClassVar[str | None] = None  # written to cfg.json for transcoders of this class
    # how `save_dictionary(unit_norm_decoder=True)` may rescale latents: "any" (a code is a
    # positively homogeneous function of its own pre-activation: relu, jumprelu), "uniform" (codes
    # are ranked against each other: only when every decoder row has the same norm), "atoms"
    # (already unit rows); None: refused
    unit_norm_export: ClassVar[str | None] = None

    def __init__(self, cfg: DictionaryConfig, train: TrainConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg, self.train_cfg, self.provenance = cfg, train, None
        self.d_in, self.d_dict, self.d_out = cfg.d_in, cfg.d_dict, cfg.d_output
        # an SAE centres its input with b_dec; a transcoder's b_dec lives at another site
        self.b_dec_to_input = not cfg.transcoder
        seed = train.seed if train is not None else 0
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        w = torch.randn(self.d_dict, self.d_out, generator=g)
        self.W_dec = nn.Parameter(w / w.norm(dim=-1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        self.register_buffer("scale_in", torch.ones(()))
        self.register_buffer("scale_out", torch.ones(()))
        self.register_buffer("tokens_since_fired", torch.zeros(self.d_dict, dtype=torch.int64))

    # --- the Dictionary protocol, on raw activations ---
    @property
    def directions(self) -> Float[Tensor, "d_dict d_out"]:
        return self.W_dec / self.scale_out

    def encode(self, x: Float[Tensor, "n d_in"]) -> SparseCode:
        self._check_width(x, self.d_in, "x")
        return self._encode(x * self.scale_in)

    def decode(self, code: SparseCode) -> Float[Tensor, "n d_out"]:
        return self._decode(code) / self.scale_out

    def forward(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_out"]:
        return self.decode(self.encode(x))

    # --- normalised-space pieces ---
    def _encode(self, x: Tensor) -> SparseCode:
        raise NotImplementedError

    def _decode(self, code: SparseCode) -> Tensor:
        return sparse_decode(SparseCode(code.values.to(self.W_dec.dtype), code.indices),
                             self.W_dec, self.b_dec)

    def _centred(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.b_dec_to_input else x

    def loss(self, x_in: Tensor, x_out: Tensor, step: int) -> LossOutput:
        raise NotImplementedError

    # --- training hooks ---
    def param_groups(self) -> list[dict]:
        """Adam parameter groups; ``lr_scale`` multiplies the schedule's learning rate."""
        return [{"params": list(self.parameters()), "lr_scale": 1.0}]

    @property
    def training_config(self) -> TrainConfig:
        if self.train_cfg is None:
            raise ValueError(f"this {self.architecture} dictionary has no TrainConfig (loaded from "
                             f"{getattr(self.provenance, 'source', 'elsewhere')}); set .train_cfg to train it")
        return self.train_cfg

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.training_config.dead_tokens

    @torch.no_grad()
    def update_firing(self, code: SparseCode, reduce: "Callable[[Tensor, int], tuple[Tensor, int]] | None" = None) -> None:
        """Count tokens since each latent fired; ``reduce(fired, n_rows)`` combines the batch's
        fired mask and row count across data-parallel ranks (`mechscope.sae.distributed`)."""
        fired = torch.zeros(self.d_dict, dtype=torch.bool, device=code.indices.device)
        fired[code.indices[code.values != 0]] = True
        n = code.values.shape[0]
        if reduce is not None:
            fired, n = reduce(fired, n)
        self.tokens_since_fired += n
        self.tokens_since_fired[fired] = 0

    @torch.no_grad()
    def after_step(self, x_in: Tensor, x_out: Tensor, generator: torch.Generator) -> None:
        """Called after each optimiser step (codebooks replace dead codes here)."""

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            w, g = self.W_dec, self.W_dec.grad
            g -= (g * w).sum(-1, keepdim=True) * w

    @torch.no_grad()
    def project_decoder(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def init_from_data(self, x_in: Tensor, x_out: Tensor) -> None:
        """Set the scales and b_dec from a first batch of raw activations."""
        train = self.training_config
        if train.normalize:
            self.scale_in.fill_(_scale(x_in, self.cfg.site_in))
            self.scale_out.fill_(_scale(x_out, self.cfg.site_out or self.cfg.site_in)
                                 if self.cfg.transcoder else float(self.scale_in))
        y = x_out * self.scale_out
        if train.b_dec_init == "mean":
            self.b_dec.copy_(y.mean(0))
        elif train.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(y))

    # --- files (raw units, SAELens names and layout; see mechscope.sae.io) ---
    @torch.no_grad()
    def folded_weights(self) -> dict[str, Tensor]:
        """Weights with the normalisation scales folded in (``decode`` unchanged, scales 1)."""
        s_out = float(self.scale_out)
        return {"W_dec": self.W_dec / s_out, "b_dec": self.b_dec / s_out}

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The tensors `load_folded` needs, with their shapes."""
        return {"W_dec": (self.d_dict, self.d_out), "b_dec": (self.d_out,)}

    @torch.no_grad()
    def load_folded(self, t: dict[str, Tensor]) -> None:
        """Set raw-unit weights (the keys of `weight_shapes`, already checked) with unit scales."""
        self.scale_in.fill_(1.0)
        self.scale_out.fill_(1.0)
        self.W_dec.copy_(t["W_dec"])
        self.b_dec.copy_(t["b_dec"])

    def saelens_config(self) -> dict[str, object]:
        """The architecture's own keys of SAELens' cfg.json (beside d_in, d_sae, ...)."""
        return {}

    @torch.no_grad()
    def unfold_scales(self, s_in: float, s_out: float) -> None:
        """After `load_folded` of weights saved with scales ``s_in``/``s_out`` folded in: put them
        back where the codes depend on them (matching pursuit); a no-op where folding keeps the
        codes (every encoder with a linear pre-activation)."""

    @classmethod
    def from_saelens_tensors(cls, t: dict[str, Tensor]) -> dict[str, Tensor]:
        """Tensors of a SAELens folder in the names `load_folded` reads (older names upgraded)."""
        return t

    @staticmethod
    def _check_width(x: Tensor, d: int, name: str) -> None:
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"{name} must be [n, {d}], got shape {tuple(x.shape)}")


def _scale(x: Tensor, site: str = "") -> float:
    """``sqrt(d / E||x||^2)``; an error, never 0 or NaN, when that is not a positive finite number."""
    where = f" at site {site}" if site else ""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"activations{where} contain NaN or inf: cannot normalise them (is the model's "
                         "output finite?)")
    ms = float(x.double().pow(2).sum(-1).mean())  # float64: float32 squares overflow from ~1.8e19
    if not ms > 0:
        raise ValueError(f"cannot normalise activations{where} whose mean squared norm is 0")
    scale = (x.shape[1] / ms) ** 0.5
    if not 1e-30 < scale < 1e30:  # raw-unit weights (scaled back by 1/scale) would overflow float32
        raise ValueError(f"activations{where} have mean squared norm {ms:.3g} (largest |x| "
                         f"{float(x.abs().max()):.3g}): beyond what float32 training can represent")
    return scale


def geometric_median(x: Float[Tensor, "n d"], iters: int = 50, eps: float = 1e-8) -> Float[Tensor, "d"]:
    """Weiszfeld's iteration for ``argmin_m Σ_i ||x_i − m||``, started at the mean."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= 1e-6 * m.norm().clamp_min(1.0):
            return new
        m = new
    return m


def mse(x_hat: Tensor, y: Tensor) -> Tensor:
    """Mean over rows of the squared error summed over features."""
    return (x_hat - y).pow(2).sum(-1).mean()


def fvu(x_hat: Tensor, y: Tensor) -> Tensor:
    """Fraction of variance unexplained ``Σ||y − ŷ||² / Σ||y − ȳ||²``."""
    return (x_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
