"""Loading models: one `Model` wrapper around a TransformerLens `HookedTransformer`.

`load_model(spec)` accepts

* a zoo name (``mechscope.interp.zoo.names()``): shipped inside the package, fully offline;
* a local Hugging Face checkpoint folder (``config.json`` + weights) of a family in
  `HF_FAMILIES` (GPT-2, Llama incl. Llama-3 rope scaling, Mistral, Qwen2, Gemma, Gemma-2,
  GPT-NeoX / Pythia): the TransformerLens config comes from TL's own ``convert_hf_model_config``
  (GPT-2 and Gemma: built here from the HF config, where TL 3.9 cannot read it offline) and the
  weights go through TL's own converters, so nothing touches the hub; ``dtype=`` casts after
  conversion;
* any TransformerLens model name (``"gpt2"``, ``"meta-llama/Llama-3.2-1B"``): loaded with
  ``HookedTransformer.from_pretrained``; needs the hub (or a seeded HF cache).

This module (with `capture`/`intervene`) is the only adapter between mechscope and
TransformerLens: a `TransformerBridge` (TL 4.x) adapter would be a second `Model` constructor.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechscope.interp.sites import Site, list_sites
from mechscope.interp.weights import AttnWeights, Norm

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig


class ModelSpecError(ValueError):
    """A model spec that is neither a zoo name, a checkpoint folder, nor a loadable hub name."""


@dataclass
class Model:
    """A TransformerLens model with its tokenizer, name and provenance: THE adapter.

    ``tl`` is the `HookedTransformer`. Nothing outside `mechscope.interp` (and the zoo) reads
    it: weights, norms, the unembedding, the BOS id, hooks and forward passes are methods here,
    so a second backend (TransformerLens 4's ``TransformerBridge``) would be a second
    constructor, not a change to every caller. ``Model.wrap(hooked_transformer)`` adapts a
    user's own model; every public function of mechscope that takes a model accepts either.

    ``bos`` overrides the BOS id for models without a tokenizer (toy models written by hand).
    """

    tl: "HookedTransformer"
    name: str
    source: str = "config"
    card: dict[str, Any] = field(default_factory=dict)
    bos: int | None = None

    @classmethod
    def wrap(cls, model: "Model | HookedTransformer") -> "Model":
        """``model`` itself if it is a `Model`; a user's ``HookedTransformer`` wrapped (named
        after its ``cfg.model_name``); anything else is a TypeError naming what is accepted."""
        if isinstance(model, Model):
            return model
        tl_module = sys.modules.get("transformer_lens")  # a HookedTransformer means TL is loaded
        if tl_module is not None and isinstance(model, tl_module.HookedTransformer):
            return cls(model, str(getattr(model.cfg, "model_name", "") or "hooked-transformer"), "user")
        raise TypeError(f"expected a mechscope Model or a transformer_lens HookedTransformer, "
                        f"got {type(model).__module__}.{type(model).__qualname__}")

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def cfg(self) -> "HookedTransformerConfig":
        """TransformerLens' config (interp/ and the zoo only; elsewhere use the properties)."""
        return self.tl.cfg

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def n_heads(self) -> int:
        return self.cfg.n_heads

    @property
    def d_head(self) -> int:
        return self.cfg.d_head

    @property
    def n_kv_heads(self) -> int:
        """Stored key/value heads (fewer than ``n_heads`` under grouped-query attention)."""
        return self.cfg.n_key_value_heads or self.cfg.n_heads

    @property
    def n_ctx(self) -> int:
        return self.cfg.n_ctx

    @property
    def d_vocab(self) -> int:
        return self.cfg.d_vocab

    @property
    def attn_only(self) -> bool:
        return bool(self.cfg.attn_only)

    @property
    def positional(self) -> str:
        """Positional scheme: ``"standard"`` (learned absolute, added to the residual),
        ``"rotary"`` (q and k rotated by position), ``"shortformer"`` or ``"alibi"``."""
        return str(self.cfg.positional_embedding_type)

    @property
    def attention_direction(self) -> str:
        """``"causal"`` (position i attends to j <= i) or ``"bidirectional"``."""
        return str(self.cfg.attention_dir)

    @property
    def parallel_blocks(self) -> bool:
        """Attention and MLP read the same residual (GPT-J, NeoX) instead of one after the other."""
        return bool(getattr(self.cfg, "parallel_attn_mlp", False))

    @property
    def tokenizer(self) -> Any:
        return self.tl.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.tl.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.cfg.dtype

    def to(self, device: "str | torch.device | None" = None, dtype: "str | torch.dtype | None" = None) -> "Model":
        """This model moved to ``device`` (``auto``, ``cpu``, ``cuda:N``: `mechscope.devices`) and cast
        to ``dtype`` (None: unchanged), in place; returns it."""
        from mechscope.devices import resolve_device

        if device is not None:
            self.tl.to(resolve_device(device))
        if dtype is not None:
            _cast(self.tl, model_dtype(dtype))
        return self

    @property
    def module(self) -> torch.nn.Module:
        """The network as a plain ``torch.nn.Module`` (parameters, state dict, train/eval, to);
        use only that interface: TransformerLens specifics go through the methods here."""
        return self.tl

    def config_dict(self) -> dict[str, Any]:
        """The architecture as JSON-able values; `from_config` rebuilds the same network."""
        return {k: v for k, v in self.cfg.to_dict().items() if k not in ("dtype", "device")}

    # -- BOS ------------------------------------------------------------------------------------
    @property
    def bos_id(self) -> int | None:
        """THE BOS lookup: ``bos`` if set, else the tokenizer's BOS, else its EOS (models
        trained with documents separated by EOS use it as BOS), else None."""
        from mechscope.interp.tokens import bos_token_id

        return self.bos if self.bos is not None else bos_token_id(self.tokenizer)

    def require_bos_id(self, purpose: str = "this") -> int:
        """`bos_id`, or a ValueError naming the model and what needed it."""
        bos = self.bos_id
        if bos is None:
            raise ValueError(f"model {self.name!r} has no BOS token (no tokenizer with a BOS or EOS "
                             f"token, and no Model.bos), which {purpose} needs")
        return bos

    # -- weights --------------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"no layer {layer}: valid layers 0..{self.n_layers - 1}")
        return layer

    def attn(self, layer: int) -> AttnWeights:
        """Attention weights of ``layer``, one entry per query head (see `AttnWeights`)."""
        a = self.tl.blocks[self._check_layer(layer)].attn
        return AttnWeights(layer, a.W_Q, a.W_K, a.W_V, a.W_O, a.b_Q, a.b_K, a.b_V, a.b_O,
                           float(a.attn_scale), self.n_heads // self.n_kv_heads)

    def W_out(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        """The MLP's output weights of ``layer`` (``mlp_out = mlp_post @ W_out + b_out``)."""
        if self.attn_only:
            raise ValueError(f"model {self.name!r} is attention-only: its blocks have no MLP")
        return self.tl.blocks[self._check_layer(layer)].mlp.W_out

    def W_in(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        """The MLP's input weights of ``layer`` (``pre = mlp_in @ W_in + b_in``; the parameter)."""
        self.W_out(layer)  # the same checks
        return self.tl.blocks[layer].mlp.W_in

    def b_in(self, layer: int) -> Float[Tensor, "d_mlp"]:
        """The MLP's input bias of ``layer`` (the parameter)."""
        self.W_out(layer)
        return self.tl.blocks[layer].mlp.b_in

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        """Token embedding (the parameter itself)."""
        return self.tl.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"] | None:
        """Learned positional embedding added to the residual; None unless `positional` is
        ``"standard"`` (rotary and ALiBi models have none, shortformer adds it to q, k only)."""
        return self.tl.pos_embed.W_pos if self.positional == "standard" else None

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """Unembedding: ``logits = ln_final(resid) @ W_U + b_U``."""
        return self.tl.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self.tl.unembed.b_U

    def ln(self, layer: int, which: int = 1) -> Norm:
        """The norm before block ``layer``'s attention (``which=1``) or MLP (``which=2``)."""
        if which not in (1, 2):
            raise ValueError(f"which must be 1 (before attention) or 2 (before the MLP), got {which}")
        blk = self.tl.blocks[self._check_layer(layer)]
        if which == 2 and self.attn_only:
            raise ValueError(f"model {self.name!r} is attention-only: its blocks have no ln2")
        return _norm(getattr(blk, f"ln{which}"), self.cfg.eps)

    @property
    def ln_final(self) -> Norm:
        """The norm before the unembedding."""
        return _norm(getattr(self.tl, "ln_final", None), self.cfg.eps)

    # -- sites ----------------------------------------------------------------------------------
    def site(self, site: "str | Site") -> Site:
        """Parse and validate a site for this model (errors name the valid kinds and layers)."""
        return Site.parse(site).validate(self.n_layers, self.n_heads, self.attn_only, self.n_kv_heads)

    def sites(self, per_head: bool = False) -> list[Site]:
        """Every site of this model (head kinds once, or once per head with ``per_head``)."""
        return list_sites(self.n_layers, self.attn_only, self.n_heads if per_head else None,
                          self.n_kv_heads if per_head else None)

    # -- text -----------------------------------------------------------------------------------
    def to_tokens(self, text: "str | Sequence[str]", prepend_bos: bool = True,
                  truncate: bool = False) -> Int[Tensor, "b pos"]:
        """Token ids ``[batch, pos]``. A text longer than the context is an error naming the
        limit (TransformerLens would cut it silently); ``truncate=True`` keeps its first n_ctx."""
        if self.tokenizer is None:
            raise ValueError(f"model {self.name!r} has no tokenizer; pass token ids instead of text")
        tokens = self.tl.to_tokens(text, prepend_bos=prepend_bos, truncate=False)
        if truncate:
            return tokens[:, : self.n_ctx]
        if tokens.shape[1] > self.n_ctx:
            raise ValueError(f"text of {tokens.shape[1]} tokens{' (BOS included)' if prepend_bos else ''} is "
                             f"longer than the context of model {self.name!r} ({self.n_ctx} tokens)")
        return tokens

    def to_str_tokens(self, tokens: "Tensor | Sequence[int]") -> list[str]:
        if self.tokenizer is None:
            return [f"<{int(t)}>" for t in tokens]
        return [self.tokenizer.decode([int(t)]) for t in tokens]

    # -- running --------------------------------------------------------------------------------
    def __call__(self, tokens: Tensor, stop_at_layer: int | None = None, **kwargs: Any) -> Tensor:
        """Logits ``[batch, pos, d_vocab]`` of tokens ``[batch, pos]``, or with
        ``stop_at_layer=L`` the residual stream entering block ``L`` ``[batch, pos, d_model]``
        (blocks ``L..`` never run); ``kwargs`` go to TransformerLens' forward."""
        return self.tl(tokens, stop_at_layer=stop_at_layer, **kwargs)

    @contextmanager
    def hooks(self, fwd_hooks: "Sequence[tuple[str, Callable]]") -> Iterator["Model"]:
        """Forward hooks ``(hook_name, fn(act, hook) -> new act or None)`` for the block; the
        handles are removed on exit, also when the block raises."""
        with self.tl.hooks(fwd_hooks=list(fwd_hooks)):
            yield self

    @contextmanager
    def optional_hook_points(self, kinds: Iterable[str]) -> Iterator[None]:
        """Turn on the hook points TransformerLens leaves off by default (``mlp_in``,
        ``result``, and ``qkv_input``: each head's own copy of its q / k / v input,
        ``blocks.L.hook_{q,k,v}_input``) for the kinds given; restored on exit."""
        kinds, tl = set(kinds), self.tl
        old = (tl.cfg.use_hook_mlp_in, tl.cfg.use_attn_result, tl.cfg.use_split_qkv_input)
        try:
            if "mlp_in" in kinds and not old[0]:
                tl.set_use_hook_mlp_in(True)
            if "result" in kinds and not old[1]:
                tl.set_use_attn_result(True)
            if "qkv_input" in kinds and not old[2]:
                tl.set_use_split_qkv_input(True)
            yield
        finally:
            if tl.cfg.use_hook_mlp_in != old[0]:
                tl.set_use_hook_mlp_in(old[0])
            if tl.cfg.use_attn_result != old[1]:
                tl.set_use_attn_result(old[1])
            if tl.cfg.use_split_qkv_input != old[2]:
                tl.set_use_split_qkv_input(old[2])

    def run_with_cache(self, tokens: Int[Tensor, "batch pos"],
                       names_filter: "Callable[[str], bool] | Sequence[str] | str | None" = None,
                       stop_at_layer: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """One forward pass; returns its output (as `__call__`) and the activations of every
        hook point that ``names_filter`` keeps (all when None), keyed by hook name."""
        out, cache = self.tl.run_with_cache(tokens, names_filter=names_filter, stop_at_layer=stop_at_layer,
                                            return_cache_object=False)
        return out, dict(cache)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: "HookedTransformerConfig | dict", tokenizer: Any = None,
                    name: str = "random", seed: int | None = 0) -> "Model":
        """A randomly initialised model (tests, speed benchmarks). With a ``seed`` the weights
        depend on it alone, and the caller's random states (torch, ``random``, numpy) are left
        as they were; with None the initialisation draws from torch's global generator."""
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        with _private_rng(seed):
            # TL's config reseeds every global generator when it has a ``seed`` field
            if isinstance(cfg, dict):
                cfg = HookedTransformerConfig(**cfg)
            tl = HookedTransformer(cfg, tokenizer=tokenizer)
        return cls(tl.eval(), name, "config")


@contextmanager
def _private_rng(seed: int | None) -> Iterator[None]:
    """Seed torch inside the block and restore every global random state on exit."""
    if seed is None:
        yield
        return
    import random

    import numpy as np

    state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


def _norm(module: Any, eps: float) -> Norm:
    """A `Norm` from a TransformerLens norm module (None or Identity: no norm)."""
    name = type(module).__name__ if module is not None else "Identity"
    kinds = {"LayerNorm": "layernorm", "LayerNormPre": "layernorm", "RMSNorm": "rmsnorm",
             "RMSNormPre": "rmsnorm", "Identity": "none"}
    if name not in kinds:
        raise ValueError(f"unsupported normalisation layer {name}; supported: {', '.join(kinds)}")
    return Norm(kinds[name], getattr(module, "w", None), getattr(module, "b", None),
                float(getattr(module, "eps", eps)))


if TYPE_CHECKING:
    # what every public function of mechscope that takes a model accepts (see `Model.wrap`)
    ModelLike = Model | HookedTransformer


def load_model(spec: "str | Path", device: "str | torch.device" = "cpu", fold_ln: bool = False,
               dtype: "str | torch.dtype | None" = None, **kwargs: Any) -> Model:
    """Load a zoo model, a local HF checkpoint folder, or a TransformerLens hub name.

    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``dtype`` of
    the weights: ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` (`mechscope.devices`).
    ``fold_ln`` folds LayerNorm weights into the next linear layers (TransformerLens' default
    processing; it keeps log-probs unchanged); ``kwargs`` go to ``from_pretrained`` for hub names.
    """
    from mechscope.devices import resolve_device
    from mechscope.interp import zoo

    device, dtype = str(resolve_device(device)), model_dtype(dtype)
    text = str(spec)
    if text in zoo.names():
        tl, card = zoo.load(text, device=device)
        return _finite(Model(_cast(tl, dtype), text, "zoo", card), text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_hf_folder(path, device, fold_ln, dtype)
    if path.exists() or text.startswith((".", "/", "~")):
        raise ModelSpecError(
            f"{text!r} is not a checkpoint folder (expected a folder with config.json); "
            f"zoo models: {', '.join(zoo.names())}"
        )
    try:
        from transformer_lens import HookedTransformer

        tl = HookedTransformer.from_pretrained(
            text, device=device, fold_ln=fold_ln, center_writing_weights=fold_ln,
            center_unembed=fold_ln, dtype=dtype, **kwargs,
        )
    except Exception as exc:  # noqa: BLE001 - TL raises many types; re-raise with the options
        raise ModelSpecError(
            f"could not load model {text!r}: not a zoo name ({', '.join(zoo.names())}), "
            f"not a local folder, and TransformerLens could not load it ({type(exc).__name__}: "
            f"{str(exc)[:300]})"
        ) from exc
    return _finite(Model(tl.eval(), text, "hub"), text)


# HF architecture -> the family name shown to users; loaded from local folders by `_load_hf_folder`
HF_FAMILIES: dict[str, str] = {
    "GPT2LMHeadModel": "GPT-2", "LlamaForCausalLM": "Llama (incl. Llama-3 rope scaling)",
    "MistralForCausalLM": "Mistral", "Qwen2ForCausalLM": "Qwen2", "GemmaForCausalLM": "Gemma",
    "Gemma2ForCausalLM": "Gemma-2", "GPTNeoXForCausalLM": "GPT-NeoX / Pythia",
}


def model_dtype(dtype: "str | torch.dtype | None") -> torch.dtype:
    """A model dtype by name or as a torch dtype (`mechscope.devices.resolve_dtype`; None: float32)."""
    from mechscope.devices import resolve_dtype

    return resolve_dtype(dtype, what="model dtype")


def _cast(tl: Any, dtype: torch.dtype) -> Any:
    """Weights (and TransformerLens' config, which builds masks and rotary tables) in ``dtype``."""
    if tl.cfg.dtype != dtype:
        tl.cfg.dtype = dtype
        tl.to(dtype)
    return tl


def _load_hf_folder(path: Path, device: str, fold_ln: bool, dtype: "str | torch.dtype" = "float32") -> Model:
    """A local HF folder of a family in `HF_FAMILIES` → HookedTransformer, without the hub.

    The TransformerLens config comes from TL's own ``convert_hf_model_config`` (Gemma: built
    here, TL knows Gemma only by hub name) and the weights from TL's own converters
    (``get_pretrained_state_dict`` with the transformers model given). Weights are converted
    and processed (``fold_ln``) in fp32 and only then cast to ``dtype``.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
    from transformer_lens.utilities.activation_functions import softcap_enabled
    from transformers import AutoModelForCausalLM

    target = model_dtype(dtype)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelSpecError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    try:
        hf_cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelSpecError(f"{cfg_file} is not valid JSON ({e})") from None
    if not isinstance(hf_cfg, dict):
        raise ModelSpecError(f"{cfg_file} must hold a JSON object")
    arch = (hf_cfg.get("architectures") or [None])[0]
    if arch not in HF_FAMILIES:
        raise ModelSpecError(
            f"{path}: architecture {arch!r} is not supported from a local folder; supported: "
            + ", ".join(f"{a} ({f})" for a, f in HF_FAMILIES.items()))
    try:
        cfg = HookedTransformerConfig(**_tl_config(path, arch, hf_cfg), device=device)
    except KeyError as e:
        raise ModelSpecError(f"{cfg_file} lacks the {arch} field {e.args[0]!r}") from None
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as e:
        raise ModelSpecError(f"{path}: the weights could not be read ({type(e).__name__}: {str(e)[:300]})") from None
    except Exception as e:  # noqa: BLE001 - safetensors' SafetensorError derives from Exception only
        if type(e).__name__ != "SafetensorError":
            raise
        raise ModelSpecError(f"{path}/model.safetensors is damaged or truncated ({e})") from None
    state = get_pretrained_state_dict(str(path), cfg, hf_model=hf_model)
    tl = HookedTransformer(cfg, tokenizer=_local_tokenizer(path), move_to_device=False)
    # as TL's from_pretrained: a soft-capped logit (Gemma-2) is not invariant to a constant shift
    center_unembed = fold_ln and not softcap_enabled(cfg.output_logits_soft_cap)
    tl.load_and_process_state_dict(
        state, fold_ln=fold_ln, center_writing_weights=fold_ln, center_unembed=center_unembed,
        fold_value_biases=fold_ln,
    )
    tl = tl.to(device)
    if target != torch.float32:
        tl = tl.to(target)  # TL's `to` also updates cfg.dtype
    card = {"path": str(path), "architecture": arch, "family": HF_FAMILIES[arch], "dtype": str(target)}
    return _finite(Model(tl.eval(), path.name, "hf-folder", card), path)


def _finite(model: Model, where: Any) -> Model:
    """A checkpoint with NaN / inf weights would make every activation NaN and fail far away
    (as "mean squared norm is 0" in training): name the tensors at load time instead."""
    bad = [n for n, p in model.tl.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ModelSpecError(f"model {str(where)!r} has non-finite weights (NaN or inf) in {', '.join(bad[:3])}{more}")
    return model


def _tl_config(path: Path, arch: str, hf: dict) -> dict[str, Any]:
    """HookedTransformerConfig fields for a local HF config (see `_load_hf_folder`)."""
    if arch in ("GemmaForCausalLM", "Gemma2ForCausalLM"):
        cfg = _gemma_cfg(hf, arch)
    elif arch == "GPT2LMHeadModel":
        cfg = _gpt2_cfg(hf)  # TL 3.9's GPT-2 branch reads n_ctx, which transformers 5 dropped
    else:
        cfg = _tl_converted_config(path)
        if arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"):
            if hf.get("head_dim") and hf["head_dim"] != cfg["d_head"]:  # TL assumes d_model / n_heads
                cfg.update(d_head=hf["head_dim"], rotary_dim=hf["head_dim"])
            if hf.get("attention_bias") or hf.get("mlp_bias"):
                raise ModelSpecError(f"{path}: attention_bias / mlp_bias are not converted by "
                                     f"TransformerLens for {arch}")
    if cfg.get("positional_embedding_type") == "rotary":
        _rope_scaling(path, hf, cfg)
    cfg.update(model_name=path.name, tokenizer_name=None, original_architecture=arch)
    return cfg


def _tl_converted_config(path: Path) -> dict[str, Any]:
    """TL's ``convert_hf_model_config`` on a copy of ``config.json`` in a folder whose path holds
    no model-family word: TL picks hard-coded hub configs for paths containing "llama" or
    "gemma" (its branches key on the path string)."""
    import shutil
    import tempfile

    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    words = ("llama", "gemma")
    for _ in range(5):  # a random suffix could spell a family word; the base folder too (TMPDIR)
        with tempfile.TemporaryDirectory(prefix="mechscope-cfg-") as tmp:
            neutral = Path(tmp) / "model"
            if any(w in str(neutral).lower() for w in words):
                continue
            neutral.mkdir()
            shutil.copy(path / "config.json", neutral / "config.json")
            return dict(convert_hf_model_config(str(neutral)))
    raise ModelSpecError(f"the temporary folder {tempfile.gettempdir()!r} contains one of {words}, "
                         "which TransformerLens reads as a hub model name; set TMPDIR elsewhere")


def _rope_scaling(path: Path, hf: dict, cfg: dict[str, Any]) -> None:
    """Llama-3 rope scaling (NTK by parts) into ``cfg``; other scalings refused, never ignored.

    transformers 5 writes ``rope_parameters`` where older versions wrote ``rope_scaling``; TL
    3.9 reads only the latter, so a Llama-3 config saved by transformers 5 lost its scaling."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if kind == "default":
        return
    if kind != "llama3":
        raise ModelSpecError(f"{path}: rope scaling {kind!r} is not supported; supported: default, llama3")
    cfg.update(use_NTK_by_parts_rope=True,
               NTK_original_ctx_len=rope.get("original_max_position_embeddings", hf.get("max_position_embeddings")),
               NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
               NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
               NTK_by_parts_factor=rope.get("factor", 1.0))


def _gemma_cfg(hf: dict, arch: str) -> dict[str, Any]:
    """Gemma / Gemma-2 config fields (TL 3.9 has them only as hard-coded hub entries; these
    are the same fields read from the HF config)."""
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    rope = hf.get("rope_parameters") or {}
    cfg: dict[str, Any] = dict(
        d_model=hf["hidden_size"], d_head=d_head, n_heads=n_heads, d_mlp=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"], n_ctx=hf.get("max_position_embeddings", 8192),
        eps=hf.get("rms_norm_eps", 1e-6), d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=d_head,
        rotary_base=hf.get("rope_theta", rope.get("rope_theta", 10000.0)), use_attn_scale=True,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads, gated_mlp=True, final_rms=True,
    )
    if arch == "Gemma2ForCausalLM":
        n = hf["num_hidden_layers"]
        types = hf.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        cfg.update(
            attn_scale=float(hf.get("query_pre_attn_scalar", d_head)) ** 0.5,
            window_size=hf.get("sliding_window"), use_local_attn=bool(hf.get("sliding_window")),
            attn_types=["local" if t == "sliding_attention" else "global" for t in types],
            attn_scores_soft_cap=hf.get("attn_logit_softcapping") or -1.0,
            output_logits_soft_cap=hf.get("final_logit_softcapping") or -1.0,
            use_normalization_before_and_after=True,
        )
    return cfg


def _local_tokenizer(path: Path) -> Any:
    if not any((path / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _gpt2_cfg(hf: dict) -> dict[str, Any]:
    return dict(
        d_model=hf["n_embd"], d_head=hf["n_embd"] // hf["n_head"], n_heads=hf["n_head"],
        d_mlp=hf.get("n_inner") or 4 * hf["n_embd"], n_layers=hf["n_layer"],
        n_ctx=hf.get("n_positions", hf.get("n_ctx", 1024)), eps=hf.get("layer_norm_epsilon", 1e-5),
        d_vocab=hf["vocab_size"], act_fn=hf.get("activation_function", "gelu_new"),
        use_attn_scale=hf.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
        normalization_type="LN",
    )
