"""`TrainConfig`: one frozen, validated description of a dictionary and how to train it.

Every field carries its help text in ``field(metadata={"help": ...})``; `fields_help()` lists
them for ``--help`` screens and `TrainConfig.from_dict` builds a config from a flat mapping (a
TOML table, command-line overrides). Validation runs once, in ``__post_init__``, and every error
names the field and the valid values.

Sweeps: `expand_sweep` turns a mapping whose values may be lists into the grid (Cartesian
product) of configs, in a fixed order (the mapping's key order, last key fastest).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu", "mp", "codebook")
B_DEC_INITS = ("geometric_median", "mean", "zeros")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """A dictionary architecture plus its training hyper-parameters (all in normalised units)."""

    # `__post_init__` is this class's type check (int accepted for float, bool refused for int,
    # messages that name the field): run-time checkers (jaxtyping's import hook with beartype)
    # must not pre-empt it on the generated `__init__`; its methods are still checked
    __no_type_check__ = True

    # --- dictionary ---
    architecture: str = _f("topk", "dictionary kind: " + ", ".join(ARCHITECTURES))
    d_in: int = _f(0, "width of the input activations (required, > 0)")
    d_dict: int = _f(0, "number of latents / atoms / codes (required, > 0)")
    d_out: int = _f(0, "width of the reconstructed activations; 0 means d_in (SAE). A "
                       "transcoder has site_out != site_in and may have d_out != d_in")
    site_in: str = _f("", "input site, e.g. 'L3.resid_post' (read from ActivationBatch sources)")
    site_out: str = _f("", "output site of a transcoder; '' means site_in (an SAE)")
    transcoder: bool = _f(False, "map x_in to x_out (pairs) instead of reconstructing x_in")
    k: int = _f(32, "active latents per row (topk, batchtopk mean, mp steps, codebook codes)")
    # --- sparsity and its penalties ---
    l1_coeff: float = _f(5.0, "relu: L1 coefficient on f_i * ||W_dec_i||")
    l1_warmup_steps: int = _f(0, "relu: steps of linear warm-up of the L1 coefficient from 0")
    l0_coeff: float = _f(1e-3, "jumprelu: coefficient of the (straight-through) L0 penalty")
    jumprelu_bandwidth: float = _f(1e-3, "jumprelu: kernel-density bandwidth epsilon")
    jumprelu_init_threshold: float = _f(1e-3, "jumprelu: initial threshold of every latent")
    batchtopk_max_per_row: int = _f(0, "batchtopk: cap on latents one row may get; 0 = 4k")
    batchtopk_threshold_momentum: float = _f(0.99, "batchtopk: EMA momentum of the threshold")
    mp_residual_threshold: float = _f(0.0, "mp: stop a row once ||residual|| falls below this "
                                           "(0 = always k steps)")
    codebook_commitment: float = _f(0.25, "codebook: weight of the commitment term")
    aux_k: int = _f(0, "topk/batchtopk: latents in the aux-k loss; 0 = d_in // 2")
    aux_coeff: float = _f(1 / 32, "topk/batchtopk: weight of the aux-k loss")
    dead_tokens: int = _f(1_000_000, "a latent is dead after this many tokens without firing")
    # --- optimisation ---
    steps: int = _f(1000, "training steps (one batch each)")
    lr: float = _f(2e-4, "peak Adam learning rate")
    adam_beta1: float = _f(0.9, "Adam beta1")
    adam_beta2: float = _f(0.999, "Adam beta2")
    warmup_steps: int = _f(0, "linear LR warm-up steps")
    decay_fraction: float = _f(0.2, "fraction of the steps, at the end, of linear LR decay to 0")
    grad_clip: float = _f(0.0, "clip the gradient norm to this (0 = off)")
    b_dec_init: str = _f("geometric_median", "b_dec init from the first batch: "
                         + ", ".join(B_DEC_INITS))
    normalize: bool = _f(True, "rescale activations so that E||x||^2 = d (saved with the SAE)")
    seed: int = _f(0, "seed of the weights and of every random choice in training")
    # --- bookkeeping ---
    log_every: int = _f(10, "steps between metric lines in metrics.jsonl")
    checkpoint_every: int = _f(0, "steps between checkpoints (0 = only at the end)")
    progress: bool = _f(True, "show a tqdm progress bar")
    wandb_project: str = _f("", "log to this Weights & Biases project ('' = off)")

    def __post_init__(self) -> None:
        def bad(name: str, valid: str) -> ValueError:
            return ValueError(f"config field {name}={getattr(self, name)!r} is invalid: {valid}")

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if not isinstance(v, want) or (f.type != "bool" and isinstance(v, bool)):
                raise TypeError(f"config field {f.name} must be {f.type}, got {v!r}")
            if f.type == "float" and not isinstance(v, float):
                object.__setattr__(self, f.name, float(v))  # downstream code sees floats only
        if self.architecture not in ARCHITECTURES:
            raise bad("architecture", "one of " + ", ".join(ARCHITECTURES))
        if self.b_dec_init not in B_DEC_INITS:
            raise bad("b_dec_init", "one of " + ", ".join(B_DEC_INITS))
        for name in ("d_in", "d_dict", "k", "steps", "log_every"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        for name in ("d_out", "l1_warmup_steps", "warmup_steps", "batchtopk_max_per_row", "aux_k",
                     "checkpoint_every", "dead_tokens"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        for name in ("lr", "jumprelu_bandwidth", "jumprelu_init_threshold"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        for name in ("l1_coeff", "l0_coeff", "aux_coeff", "codebook_commitment", "grad_clip",
                     "mp_residual_threshold"):
            if not getattr(self, name) >= 0:
                raise bad(name, "must be >= 0")
        for name in ("adam_beta1", "adam_beta2", "batchtopk_threshold_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        if not 0 <= self.decay_fraction <= 1:
            raise bad("decay_fraction", "must be in [0, 1]")
        if self.k > self.d_dict:
            raise bad("k", f"must be <= d_dict={self.d_dict}")
        if self.warmup_steps > self.steps:
            raise bad("warmup_steps", f"must be <= steps={self.steps}")
        if self.d_out not in (0, self.d_in) and not self.transcoder:
            raise bad("d_out", "may differ from d_in only when transcoder=true")
        if self.site_out and self.site_out != self.site_in and not self.transcoder:
            raise bad("site_out", "may differ from site_in only when transcoder=true")
        if self.transcoder and self.architecture in ("mp", "codebook"):
            raise bad("architecture", "transcoders support topk, batchtopk, relu, jumprelu "
                      "(mp and codebook encode with their own decoder atoms)")
        for name in ("site_in", "site_out"):
            if getattr(self, name):
                from mechscope.interp.sites import Site

                try:
                    Site.parse(getattr(self, name))
                except ValueError as e:
                    raise ValueError(f"config field {name}: {e}") from None

    @property
    def d_output(self) -> int:
        return self.d_out or self.d_in

    @property
    def effective_aux_k(self) -> int:
        return min(self.aux_k or max(self.d_in // 2, 1), self.d_dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from a flat mapping; unknown keys and list values (use `expand_sweep`) fail."""
        _check_keys(data)
        lists = [k for k, v in data.items() if isinstance(v, (list, tuple))]
        if lists:
            raise ValueError(f"fields {lists} are lists: a sweep; use expand_sweep(...)")
        return cls(**data)  # TOML's int for a float field is fine: __post_init__ converts it


def _check_keys(data: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {', '.join(sorted(names))}")


def fields_help() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every config field, in declaration order."""
    return [(f.name, f.type, f.default, f.metadata["help"]) for f in dataclasses.fields(TrainConfig)]


# fields whose values must agree across a sweep, because every run reads the same stream
SHARED_FIELDS = ("d_in", "d_out", "site_in", "site_out", "transcoder", "steps", "normalize",
                 "log_every", "checkpoint_every")


def expand_sweep(data: Mapping[str, Any]) -> list[TrainConfig]:
    """The grid of configs over every list-valued field (a scalar is a one-point axis)."""
    _check_keys(data)
    axes = [(k, list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in data.items()]
    for name, values in axes:
        if not values:
            raise ValueError(f"sweep field {name} is an empty list")
        if name in SHARED_FIELDS and len(values) > 1:
            raise ValueError(f"field {name} cannot be swept: all runs of a sweep share one data "
                             f"stream and {', '.join(SHARED_FIELDS)}")
    return [TrainConfig.from_dict(dict(zip([a[0] for a in axes], combo)))
            for combo in itertools.product(*[a[1] for a in axes])]
