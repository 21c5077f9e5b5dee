"""Configs: what a dictionary is (`DictionaryConfig`, one per architecture) and how it is trained
(`TrainConfig`); `RunConfig` pairs them for one training run.

- `DictionaryConfig` holds the shape and sites (``d_in``, ``d_dict``, ``d_out``, ``site_in``,
  ``site_out``, ``transcoder``, ``k``); each architecture subclasses it with its own fields (its
  loss coefficients, thresholds, ...). A dictionary loaded from SAELens or sparsify has one of
  these and no `TrainConfig`.
- `TrainConfig` holds the optimisation and bookkeeping fields (steps, Adam, LR schedule, seed,
  initialisation from data, dead-latent window, logging).
- `RunConfig.from_dict` reads the flat ``[sae]`` table of a job file: ``architecture`` picks the
  dictionary config and every other key is routed to the config it belongs to; a key of another
  architecture, or an unknown key, is an error that names the valid keys of this architecture.

Every field carries its help text in ``field(metadata={"help": ...})``; `fields_help()` lists
all of them for ``--help`` screens. Validation runs once, in ``__post_init__``, and every error
names the field and the valid values.

Sweeps: `expand_sweep` turns a flat mapping whose values may be lists into the grid (Cartesian
product) of `RunConfig` s, in a fixed order (the mapping's key order, last key fastest). A key
may then belong to any architecture of the sweep; it applies to the runs of the architectures
that have it.
"""

from __future__ import annotations

import dataclasses
import math
import itertools
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, ClassVar

B_DEC_INITS = ("geometric_median", "mean", "zeros")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _bad(obj: Any, name: str, valid: str) -> ValueError:
    return ValueError(f"config field {name}={getattr(obj, name)!r} is invalid: {valid}")


class _Checked:
    """Type check (int accepted for float, bool refused for int; floats stored as float) and
    range checks, run once from ``__post_init__``."""

    # `__post_init__` is the type check, with messages that name the field: run-time checkers
    # (jaxtyping's import hook with beartype) must not pre-empt it on the generated `__init__`
    __no_type_check__ = True
    _positive: ClassVar[tuple[str, ...]] = ()
    _non_negative: ClassVar[tuple[str, ...]] = ()

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if not isinstance(v, want) or (f.type != "bool" and isinstance(v, bool)):
                raise TypeError(f"config field {f.name} must be {f.type}, got {v!r}")
            if f.type == "float" and not isinstance(v, float):
                object.__setattr__(self, f.name, float(v))  # downstream code sees floats only
            if f.type == "float" and not math.isfinite(v):  # inf passes every "> 0" test below
                raise _bad(self, f.name, "must be a finite number")
        for name in self._positive:
            if not getattr(self, name) > 0:
                raise _bad(self, name, "must be > 0")
        for name in self._non_negative:
            if not getattr(self, name) >= 0:
                raise _bad(self, name, "must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)


# -- dictionaries ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DictionaryConfig(_Checked):
    """Shape and sites of a dictionary; subclasses add their architecture's own fields."""

    architecture: ClassVar[str] = ""
    transcoders: ClassVar[bool] = True  # may map one site to another
    _positive = ("d_in", "d_dict", "k")
    _non_negative = ("d_out",)

    d_in: int = _f(0, "width of the input activations (required, > 0)")
    d_dict: int = _f(0, "number of latents / atoms / codes (required, > 0)")
    d_out: int = _f(0, "width of the reconstructed activations; 0 means d_in (SAE). A "
                       "transcoder has site_out != site_in and may have d_out != d_in")
    site_in: str = _f("", "input site, e.g. 'L3.resid_post' (read from ActivationBatch sources)")
    site_out: str = _f("", "output site of a transcoder; '' means site_in (an SAE)")
    transcoder: bool = _f(False, "map x_in to x_out (pairs) instead of reconstructing x_in")
    k: int = _f(32, "active latents per row (topk, batchtopk mean, mp steps, codebook codes)")

    def __post_init__(self) -> None:
        self._check_types()
        if self.k > self.d_dict:
            raise _bad(self, "k", f"must be <= d_dict={self.d_dict}")
        if self.d_out not in (0, self.d_in) and not self.transcoder:
            raise _bad(self, "d_out", "may differ from d_in only when transcoder=true")
        if self.site_out and self.site_out != self.site_in and not self.transcoder:
            raise _bad(self, "site_out", "may differ from site_in only when transcoder=true")
        if self.transcoder and not self.transcoders:
            with_tc = ", ".join(a for a, c in CONFIGS.items() if c.transcoders)
            raise _bad(self, "transcoder", f"architecture {self.architecture} has no transcoder; "
                       f"transcoders support {with_tc} (mp and codebook encode with their own "
                       "decoder atoms)")
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

    def to_dict(self) -> dict[str, Any]:
        """Flat, with ``architecture`` first (the form `dictionary_config` reads back)."""
        return {"architecture": self.architecture, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class TopKConfig(DictionaryConfig):
    """Top-k SAE (Gao et al. 2024) with the aux-k loss against dead latents."""

    architecture: ClassVar[str] = "topk"
    _non_negative = ("d_out", "aux_k", "aux_coeff")

    aux_k: int = _f(0, "topk/batchtopk: latents in the aux-k loss; 0 = d_in // 2")
    aux_coeff: float = _f(1 / 32, "topk/batchtopk: weight of the aux-k loss")

    @property
    def effective_aux_k(self) -> int:
        return min(self.aux_k or max(self.d_in // 2, 1), self.d_dict)


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """Batch-top-k SAE (Bussmann et al. 2024)."""

    architecture: ClassVar[str] = "batchtopk"
    _non_negative = ("d_out", "aux_k", "aux_coeff", "batchtopk_max_per_row", "batchtopk_threshold_window")

    batchtopk_max_per_row: int = _f(0, "batchtopk: cap on latents one row may get; 0 = 4k")
    batchtopk_threshold_momentum: float = _f(0.99, "batchtopk: EMA momentum of the threshold "
                                             "before the final window")
    batchtopk_threshold_window: int = _f(0, "batchtopk: the exported threshold is the mean of the "
                                            "per-batch thresholds over this many final steps; "
                                            "0 = max(1, steps // 10)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.batchtopk_threshold_momentum < 1:
            raise _bad(self, "batchtopk_threshold_momentum", "must be in [0, 1)")


@dataclass(frozen=True)
class MatryoshkaConfig(BatchTopKConfig):
    """Matryoshka batch-top-k SAE (Bussmann et al. 2025; Nabeshima 2024)."""

    architecture: ClassVar[str] = "matryoshka"

    matryoshka_widths: str = _f("", "matryoshka: comma-separated nested prefix widths, increasing, "
                                    "the last = d_dict (e.g. '128,512,2048'); '' = d_dict/16, "
                                    "d_dict/4, d_dict")

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            w = self.widths
        except ValueError:
            raise _bad(self, "matryoshka_widths", "comma-separated integers") from None
        if any(b <= a for a, b in zip((0, *w), w)) or w[-1] != self.d_dict:
            raise _bad(self, "matryoshka_widths", f"strictly increasing positive widths ending at "
                       f"d_dict={self.d_dict}")

    @property
    def widths(self) -> tuple[int, ...]:
        if not self.matryoshka_widths.strip():
            return tuple(sorted({max(1, self.d_dict // 16), max(1, self.d_dict // 4), self.d_dict}))
        return tuple(int(v) for v in self.matryoshka_widths.split(","))


@dataclass(frozen=True)
class ReluConfig(DictionaryConfig):
    """ReLU + L1 SAE (Anthropic, April 2024)."""

    architecture: ClassVar[str] = "relu"
    _non_negative = ("d_out", "l1_coeff", "l1_warmup_steps")

    l1_coeff: float = _f(5.0, "relu, gated: L1 coefficient on f_i * ||W_dec_i|| (gated: on "
                              "relu(pi_gate)_i)")
    l1_warmup_steps: int = _f(0, "relu: steps of linear warm-up of the L1 coefficient from 0")


@dataclass(frozen=True)
class GatedConfig(DictionaryConfig):
    """Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated SAEs")."""

    architecture: ClassVar[str] = "gated"
    _non_negative = ("d_out", "l1_coeff", "l1_warmup_steps")

    l1_coeff: float = _f(1.0, "gated: L1 coefficient on relu(pi_gate)_i * ||W_dec_i||")
    l1_warmup_steps: int = _f(0, "gated: steps of linear warm-up of the L1 coefficient from 0")


@dataclass(frozen=True)
class JumpReluConfig(DictionaryConfig):
    """JumpReLU SAE (Rajamanoharan et al. 2024); defaults are SAELens 6's (inputs normalised to
    E||x||^2 = d_in, as SAELens' ``expected_average_only_in``)."""

    architecture: ClassVar[str] = "jumprelu"
    _positive = ("d_in", "d_dict", "k", "jumprelu_bandwidth", "jumprelu_init_threshold",
                 "jumprelu_threshold_lr_scale")
    _non_negative = ("d_out", "l0_coeff", "l0_warmup_steps", "jumprelu_target_l0")

    l0_coeff: float = _f(1.0, "jumprelu: coefficient of the (straight-through) L0 penalty; "
                              "higher = sparser")
    l0_warmup_steps: int = _f(0, "jumprelu: steps of linear warm-up of l0_coeff from 0")
    jumprelu_bandwidth: float = _f(0.05, "jumprelu: kernel-density bandwidth epsilon of the "
                                         "threshold's pseudo-derivative")
    jumprelu_init_threshold: float = _f(0.01, "jumprelu: initial threshold of every latent")
    jumprelu_threshold_lr_scale: float = _f(1.0, "jumprelu: the threshold's learning rate is lr times "
                                                 "this (SAELens: 1; short runs need ~10 so that "
                                                 "lr * scale * steps >~ 1)")
    jumprelu_sparsity_loss: str = _f("step", "jumprelu: 'step' (penalty l0_coeff * L0) or "
                                     "'quadratic' (l0_coeff * 2/T * (L0 - T)^2 around "
                                     "jumprelu_target_l0 = T; Gemma Scope 2)")
    jumprelu_target_l0: float = _f(0.0, "jumprelu: target L0 of the quadratic sparsity loss")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.jumprelu_sparsity_loss not in ("step", "quadratic"):
            raise _bad(self, "jumprelu_sparsity_loss", "one of step, quadratic")
        if self.jumprelu_sparsity_loss == "quadratic" and not self.jumprelu_target_l0 > 0:
            raise _bad(self, "jumprelu_target_l0", "must be > 0 when jumprelu_sparsity_loss='quadratic'")


@dataclass(frozen=True)
class MatchingPursuitConfig(DictionaryConfig):
    """Matching-pursuit SAE (Costa et al. 2025)."""

    architecture: ClassVar[str] = "mp"
    transcoders: ClassVar[bool] = False
    _non_negative = ("d_out", "mp_residual_threshold")

    mp_residual_threshold: float = _f(0.0, "mp: stop a row once ||residual|| falls below this "
                                           "(0 = always k steps)")


@dataclass(frozen=True)
class CodebookConfig(DictionaryConfig):
    """Codebook features (Tamkin et al. 2023)."""

    architecture: ClassVar[str] = "codebook"
    transcoders: ClassVar[bool] = False
    _non_negative = ("d_out", "codebook_commitment")

    codebook_commitment: float = _f(0.25, "codebook: weight of the commitment term")


CONFIGS: dict[str, type[DictionaryConfig]] = {c.architecture: c for c in (
    TopKConfig, BatchTopKConfig, MatryoshkaConfig, ReluConfig, GatedConfig, JumpReluConfig,
    MatchingPursuitConfig, CodebookConfig)}
ARCHITECTURES = tuple(CONFIGS)


# -- training -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig(_Checked):
    """How a dictionary is trained (all in normalised units)."""

    _positive = ("steps", "log_every", "lr")
    _non_negative = ("warmup_steps", "checkpoint_every", "dead_tokens", "grad_clip")

    dead_tokens: int = _f(1_000_000, "a latent is dead after this many tokens without firing "
                                     "(aux-k, codebook code replacement, dead_fraction)")
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
    log_every: int = _f(10, "steps between metric lines in metrics.jsonl")
    checkpoint_every: int = _f(0, "steps between checkpoints (0 = only at the end)")
    progress: bool = _f(True, "show a tqdm progress bar")
    wandb_project: str = _f("", "log to this Weights & Biases project ('' = off)")
    dtype: str = _f("float32", "dtype of the dictionary parameters and Adam state: float32, "
                    "bfloat16, float16 (keep float32 and use autocast for speed)")
    autocast: str = _f("", "run the loss forward under torch.autocast in this dtype: '' (off), "
                       "bfloat16, float16 (parameters and updates stay in dtype)")

    def __post_init__(self) -> None:
        self._check_types()
        from mechscope.devices import check_dtype_name

        for name in ("dtype", "autocast"):
            if getattr(self, name):
                try:
                    object.__setattr__(self, name, check_dtype_name(getattr(self, name)))
                except ValueError:
                    raise _bad(self, name, "one of float32, bfloat16, float16"
                               + (" or '' (off)" if name == "autocast" else "")) from None
        if self.b_dec_init not in B_DEC_INITS:
            raise _bad(self, "b_dec_init", "one of " + ", ".join(B_DEC_INITS))
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise _bad(self, name, "must be in [0, 1)")
        if not 0 <= self.decay_fraction <= 1:
            raise _bad(self, "decay_fraction", "must be in [0, 1]")
        if self.warmup_steps > self.steps:
            raise _bad(self, "warmup_steps", f"must be <= steps={self.steps}")


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


TRAIN_FIELDS = tuple(_names(TrainConfig))


def dictionary_fields(architecture: str) -> list[str]:
    """``architecture`` and the fields of its `DictionaryConfig`, in declaration order."""
    return ["architecture", *_names(_config_class(architecture))]


def _config_class(architecture: Any) -> type[DictionaryConfig]:
    if architecture not in CONFIGS:
        raise ValueError(f"config field architecture={architecture!r} is invalid: one of "
                         + ", ".join(ARCHITECTURES))
    return CONFIGS[architecture]


def dictionary_config(data: Mapping[str, Any]) -> DictionaryConfig:
    """The `DictionaryConfig` of a flat mapping with ``architecture`` (default topk) and only
    that architecture's fields (as written by `DictionaryConfig.to_dict`)."""
    data = dict(data)
    cls = _config_class(data.pop("architecture", "topk"))
    _check_keys(data, cls.architecture, allowed=set(_names(cls)))
    return cls(**data)


def _check_keys(data: Mapping[str, Any], architecture: str, allowed: set[str]) -> None:
    valid = ", ".join(sorted(allowed | {"architecture"}))
    for key in data:
        if key in allowed:
            continue
        owners = [a for a, c in CONFIGS.items() if key in _names(c)]
        if owners:
            raise ValueError(f"config field {key} belongs to architecture {', '.join(owners)}, not "
                             f"{architecture}; valid fields for {architecture}: {valid}")
        unknown = sorted(k for k in data if k not in allowed and not any(k in _names(c) for c in CONFIGS.values()))
        raise ValueError(f"unknown config field(s) {unknown}; valid fields for {architecture}: {valid}")


# -- one training run -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    """A dictionary and how to train it: the flat ``[sae]`` table of a job, parsed and validated."""

    dictionary: DictionaryConfig
    train: TrainConfig = TrainConfig()

    @property
    def architecture(self) -> str:
        return self.dictionary.architecture

    def parts(self) -> tuple[DictionaryConfig, TrainConfig]:
        """``(dictionary, train)``, e.g. for ``build_dictionary(*run.parts())``."""
        return self.dictionary, self.train

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping `from_dict` reads: architecture, dictionary fields, training fields."""
        return {**self.dictionary.to_dict(), **self.train.to_dict()}

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with flat field changes (routed as in `from_dict`); changing ``architecture``
        drops the old architecture's own fields."""
        old = frozenset(_names(type(self.dictionary))) - set(changes)
        return RunConfig.from_dict({**self.to_dict(), **changes}, sweep_fields=old)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], sweep_fields: frozenset[str] = frozenset()) -> "RunConfig":
        """Route a flat mapping's keys to the dictionary and training configs.

        Keys of another architecture are errors, except those in ``sweep_fields`` (keys that an
        architecture of the same sweep uses), which are dropped. List values (a sweep) fail: use
        `expand_sweep`.
        """
        lists = [k for k, v in data.items() if isinstance(v, (list, tuple))]
        if lists:
            raise ValueError(f"fields {lists} are lists: a sweep; use expand_sweep(...)")
        arch = data.get("architecture", "topk")
        own = set(_names(_config_class(arch)))
        d = {k: v for k, v in data.items() if k in own}
        t = {k: v for k, v in data.items() if k in TRAIN_FIELDS}
        rest = {k: v for k, v in data.items()
                if k not in own and k not in TRAIN_FIELDS and k != "architecture" and k not in sweep_fields}
        _check_keys(rest, arch, own | set(TRAIN_FIELDS))
        # TOML's int for a float field is fine: __post_init__ converts it
        return cls(CONFIGS[arch](**d), TrainConfig(**t))


def fields_help() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every config field: architecture, the dictionary fields
    shared by every architecture, each architecture's own fields, then the training fields."""
    rows = [("architecture", "str", "topk", "dictionary kind: " + ", ".join(ARCHITECTURES))]
    seen = {"architecture"}
    for cls in (DictionaryConfig, *CONFIGS.values(), TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name not in seen:
                seen.add(f.name)
                rows.append((f.name, f.type, f.default, f.metadata["help"]))
    return rows


# fields whose values must agree across a sweep, because every run reads the same stream; the
# sites may be swept (one model pass feeds every site: the job fills d_in per site)
SHARED_FIELDS = ("d_in", "d_out", "transcoder", "steps", "normalize", "log_every", "checkpoint_every")
# fields the training loop itself reads from the first run (all runs step together)
LOOP_FIELDS = ("steps", "log_every", "checkpoint_every")
SITE_FIELDS = ("site_in", "site_out")


def expand_sweep(data: Mapping[str, Any]) -> list[RunConfig]:
    """The grid of configs over every list-valued field (a scalar is a one-point axis).

    ``site_in`` and ``site_out`` both lists make one axis of pairs (a transcoder per layer), not
    their product.
    """
    axes = [(k, list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in data.items()]
    for name, values in axes:
        if not values:
            raise ValueError(f"sweep field {name} is an empty list")
        if name in SHARED_FIELDS and len(values) > 1:
            raise ValueError(f"field {name} cannot be swept: all runs of a sweep share one data "
                             f"stream and {', '.join(SHARED_FIELDS)}")
    lists = dict(axes)
    if all(isinstance(data.get(k), (list, tuple)) for k in SITE_FIELDS):
        ins, outs = lists["site_in"], lists["site_out"]
        if len(ins) != len(outs):
            raise ValueError(f"site_in ({len(ins)} sites) and site_out ({len(outs)}) are both lists: "
                             "they pair up and must have the same length")
        axes = [("site_in", list(zip(ins, outs))) if k == "site_in" else (k, v)
                for k, v in axes if k != "site_out"]
    archs = lists.get("architecture", ["topk"])
    for a in archs:
        _config_class(a)
    used = frozenset(k for a in archs for k in _names(CONFIGS[a]))
    out = []
    for combo in itertools.product(*[a[1] for a in axes]):
        point = dict(zip([a[0] for a in axes], combo))
        if isinstance(point.get("site_in"), tuple):
            point["site_in"], point["site_out"] = point["site_in"]
        out.append(RunConfig.from_dict(point, used))
    return out
