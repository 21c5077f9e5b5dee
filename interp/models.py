"""Loading models: one `Model` wrapper around a TransformerLens `HookedTransformer`.

`load_model(spec)` accepts

* a zoo name (``mechscope.interp.zoo.names()``): shipped inside the package, fully offline;
* a local Hugging Face checkpoint folder (``config.json`` + weights) of the GPT-2 or Llama
  family: the TransformerLens config is built from the local HF config and the weights go
  through TransformerLens' own conversion functions, so nothing touches the hub;
* any TransformerLens model name (``"gpt2"``, ``"meta-llama/Llama-3.2-1B"``): loaded with
  ``HookedTransformer.from_pretrained``; needs the hub (or a seeded HF cache).

This module (with `capture`/`intervene`) is the only adapter between mechscope and
TransformerLens: a `TransformerBridge` (TL 4.x) adapter would be a second `Model` constructor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechscope.interp.sites import Site, list_sites

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig


class ModelSpecError(ValueError):
    """A model spec that is neither a zoo name, a checkpoint folder, nor a loadable hub name."""


@dataclass
class Model:
    """A TransformerLens model with its tokenizer, name and provenance.

    ``tl`` is the `HookedTransformer`; everything else in mechscope reads shapes and weights from
    it through this wrapper, so the adapter stays in one place.
    """

    tl: "HookedTransformer"
    name: str
    source: str = "config"
    card: dict[str, Any] = field(default_factory=dict)

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def cfg(self) -> "HookedTransformerConfig":
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
    def n_kv_heads(self) -> int:
        """Key/value heads (fewer than ``n_heads`` under grouped-query attention)."""
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
    def tokenizer(self) -> Any:
        return self.tl.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.tl.parameters()).device

    # -- sites ----------------------------------------------------------------------------------
    def site(self, site: "str | Site") -> Site:
        """Parse and validate a site for this model (errors name the valid kinds and layers)."""
        return Site.parse(site).validate(self.n_layers, self.n_heads, self.attn_only, self.n_kv_heads)

    def sites(self, per_head: bool = False) -> list[Site]:
        """Every site of this model (head kinds once, or once per head with ``per_head``)."""
        return list_sites(self.n_layers, self.attn_only, self.n_heads if per_head else None,
                          self.n_kv_heads if per_head else None)

    # -- text -----------------------------------------------------------------------------------
    def to_tokens(self, text: "str | Sequence[str]", prepend_bos: bool = True) -> Int[Tensor, "b pos"]:
        if self.tokenizer is None:
            raise ValueError(f"model {self.name!r} has no tokenizer; pass token ids instead of text")
        return self.tl.to_tokens(text, prepend_bos=prepend_bos)

    def to_str_tokens(self, tokens: "Tensor | Sequence[int]") -> list[str]:
        if self.tokenizer is None:
            return [f"<{int(t)}>" for t in tokens]
        return [self.tokenizer.decode([int(t)]) for t in tokens]

    def __call__(self, tokens: Tensor, **kwargs: Any) -> Tensor:
        return self.tl(tokens, **kwargs)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: "HookedTransformerConfig | dict", tokenizer: Any = None,
                    name: str = "random", seed: int | None = 0) -> "Model":
        """A randomly initialised model (tests, speed benchmarks)."""
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        if isinstance(cfg, dict):
            cfg = HookedTransformerConfig(**cfg)
        if seed is not None:
            torch.manual_seed(seed)
        tl = HookedTransformer(cfg, tokenizer=tokenizer)
        return cls(tl.eval(), name, "config")


def load_model(spec: "str | Path", device: str = "cpu", fold_ln: bool = False, **kwargs: Any) -> Model:
    """Load a zoo model, a local HF checkpoint folder, or a TransformerLens hub name.

    ``fold_ln`` folds LayerNorm weights into the next linear layers (TransformerLens' default
    processing; it keeps log-probs unchanged); ``kwargs`` go to ``from_pretrained`` for hub names.
    """
    from mechscope.interp import zoo

    text = str(spec)
    if text in zoo.names():
        tl, card = zoo.load(text, device=device)
        return Model(tl, text, "zoo", card)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_hf_folder(path, device, fold_ln)
    if path.exists() or text.startswith((".", "/", "~")):
        raise ModelSpecError(
            f"{text!r} is not a checkpoint folder (expected a folder with config.json); "
            f"zoo models: {', '.join(zoo.names())}"
        )
    try:
        from transformer_lens import HookedTransformer

        tl = HookedTransformer.from_pretrained(
            text, device=device, fold_ln=fold_ln, center_writing_weights=fold_ln,
            center_unembed=fold_ln, **kwargs,
        )
    except Exception as exc:  # noqa: BLE001 - TL raises many types; re-raise with the options
        raise ModelSpecError(
            f"could not load model {text!r}: not a zoo name ({', '.join(zoo.names())}), "
            f"not a local folder, and TransformerLens could not load it ({type(exc).__name__}: "
            f"{str(exc)[:300]})"
        ) from exc
    return Model(tl.eval(), text, "hub")


def _load_hf_folder(path: Path, device: str, fold_ln: bool) -> Model:
    """A local GPT-2 / Llama HF folder → HookedTransformer, without the hub."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoModelForCausalLM

    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelSpecError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    hf_cfg = json.loads(cfg_file.read_text())
    arch = (hf_cfg.get("architectures") or [None])[0]
    builders = {"GPT2LMHeadModel": _gpt2_cfg, "LlamaForCausalLM": _llama_cfg}
    if arch not in builders:
        raise ModelSpecError(
            f"{path}: architecture {arch!r} is not supported from a local folder; "
            f"supported: {', '.join(builders)}"
        )
    cfg = HookedTransformerConfig(**builders[arch](hf_cfg), device=device)
    hf_model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    if arch == "GPT2LMHeadModel":
        from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights as convert
    else:
        from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights as convert
    state = convert(hf_model, cfg)
    tokenizer = _local_tokenizer(path)
    tl = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    tl.load_and_process_state_dict(
        state, fold_ln=fold_ln, center_writing_weights=fold_ln, center_unembed=fold_ln,
        fold_value_biases=fold_ln,
    )
    return Model(tl.to(device).eval(), path.name, "hf-folder", {"path": str(path), "architecture": arch})


def _local_tokenizer(path: Path) -> Any:
    if not any((path / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _gpt2_cfg(hf: dict) -> dict:
    return dict(
        d_model=hf["n_embd"], d_head=hf["n_embd"] // hf["n_head"], n_heads=hf["n_head"],
        d_mlp=hf.get("n_inner") or 4 * hf["n_embd"], n_layers=hf["n_layer"],
        n_ctx=hf.get("n_positions", hf.get("n_ctx", 1024)), eps=hf.get("layer_norm_epsilon", 1e-5),
        d_vocab=hf["vocab_size"], act_fn=hf.get("activation_function", "gelu_new"),
        use_attn_scale=hf.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
        normalization_type="LN", original_architecture="GPT2LMHeadModel",
    )


def _llama_cfg(hf: dict) -> dict:
    n_heads = hf["num_attention_heads"]
    n_kv = hf.get("num_key_value_heads") or n_heads
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    return dict(
        d_model=hf["hidden_size"], d_head=d_head, n_heads=n_heads, d_mlp=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"], n_ctx=hf.get("max_position_embeddings", 2048),
        eps=hf.get("rms_norm_eps", 1e-6), d_vocab=hf["vocab_size"], act_fn=hf.get("hidden_act", "silu"),
        n_key_value_heads=n_kv if n_kv != n_heads else None, normalization_type="RMS",
        positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=d_head,
        rotary_base=theta, final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM",
    )
