"""Recipes of the zoo models: architecture (TransformerLens config fields) and training settings.

All three are built as ``HookedTransformer(HookedTransformerConfig(**cfg))`` and trained from a
fixed seed with Adam(W), linear warm-up and cosine decay to ``min_lr_ratio`` of the peak rate
(Loshchilov & Hutter 2017). Sizes are chosen for a build of minutes on a 2-core CPU.
``quick`` shrinks everything to a smoke build that runs in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

LM_VOCAB = 4096


@dataclass(frozen=True)
class ZooSpec:
    name: str
    kind: str  # "lm": next-token on the corpus; "induction": repeated random segments
    description: str
    cfg: dict[str, Any]
    steps: int
    batch: int
    seq_len: int  # tokens per training row, BOS included
    lr: float
    warmup: int
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.1
    dtype: str = "float16"  # storage dtype of the shipped weights
    fold_ln: bool = False  # fold LayerNorm weights into the next layer before saving (TL's LNPre)
    extra: dict[str, Any] = field(default_factory=dict)


_GPT2 = dict(
    n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=256, d_vocab=LM_VOCAB,
    act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
    original_architecture="GPT2LMHeadModel", default_prepend_bos=True,
)
_LLAMA = dict(
    n_layers=4, d_model=128, n_heads=4, d_head=32, n_key_value_heads=2, d_mlp=352, n_ctx=256,
    d_vocab=LM_VOCAB, act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True,
    positional_embedding_type="rotary", rotary_dim=32, rotary_base=10000, eps=1e-5,
    original_architecture="LlamaForCausalLM", default_prepend_bos=True,
)
_INDUCTION = dict(
    n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=128, d_vocab=97, attn_only=True,
    act_fn=None, normalization_type="LN", positional_embedding_type="standard",
    default_prepend_bos=True,
)

SPECS: dict[str, ZooSpec] = {
    "gpt2-shakespeare": ZooSpec(
        name="gpt2-shakespeare", kind="lm",
        description="GPT-2 architecture (learned positions, LayerNorm, GELU MLP), 4 layers, "
                    "d_model 128, trained on Shakespeare with a 4096-token byte-level BPE.",
        cfg=_GPT2, steps=1400, batch=16, seq_len=256, lr=3e-3, warmup=30, weight_decay=0.05,
    ),
    "llama-shakespeare": ZooSpec(
        name="llama-shakespeare", kind="lm",
        description="Llama architecture (RMSNorm, rotary, gated SiLU MLP, grouped-query "
                    "attention 4 query / 2 key-value heads), 4 layers, d_model 128, same corpus "
                    "and tokenizer as gpt2-shakespeare.",
        cfg=_LLAMA, steps=600, batch=8, seq_len=256, lr=3e-3, warmup=30, weight_decay=0.05,
    ),
    "attn-only-induction": ZooSpec(
        name="attn-only-induction", kind="induction",
        description="2-layer attention-only model (d_model 64, 4 heads, LayerNorm folded into the "
                    "weights after training, so it ships as LNPre) trained on "
                    "[BOS] + a random printable-ASCII segment repeated with a random period "
                    "(4-32): forms a previous-token head in layer 0 and an induction head in "
                    "layer 1 (Elhage et al. 2021; Olsson et al. 2022).",
        cfg=_INDUCTION, steps=2000, batch=32, seq_len=96, lr=3e-3, warmup=100,
        dtype="float32", fold_ln=True, extra={"min_period": 4, "max_period": 32},
    ),
}

DEFAULT = "gpt2-shakespeare"


def get_spec(name: str, quick: bool = False, steps: int | None = None) -> ZooSpec:
    if name not in SPECS:
        raise ValueError(f"unknown zoo model {name!r}; zoo names are {sorted(SPECS)}")
    spec = SPECS[name]
    if quick:
        small = dict(n_layers=spec.cfg["n_layers"] if spec.kind == "induction" else 1,
                     d_model=32, d_head=8, n_ctx=64)
        if "d_mlp" in spec.cfg:
            small["d_mlp"] = 64
        if "rotary_dim" in spec.cfg:
            small["rotary_dim"] = 8
        spec = replace(spec, cfg={**spec.cfg, **small}, steps=8, batch=4, seq_len=48, warmup=2,
                       extra={**spec.extra, "max_period": min(spec.extra.get("max_period", 8), 16)})
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        spec = replace(spec, steps=steps, warmup=min(spec.warmup, max(1, steps // 10)))
    return spec
