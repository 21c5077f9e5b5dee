"""`Site`: a typed place in a transformer where activations are read or written.

A site is ``(layer, kind, head)`` and is written ``L{layer}.{kind}`` or ``L{layer}.{kind}.H{head}``,
e.g. ``L3.resid_post`` or ``L1.z.H2``. Each kind maps to one TransformerLens hook point:

================  ===============================  ===============================
kind              TransformerLens hook             shape of the captured tensor
================  ===============================  ===============================
resid_pre         blocks.L.hook_resid_pre          [batch, pos, d_model]
resid_mid         blocks.L.hook_resid_mid          [batch, pos, d_model]
resid_post        blocks.L.hook_resid_post         [batch, pos, d_model]
attn_out          blocks.L.hook_attn_out           [batch, pos, d_model]
mlp_out           blocks.L.hook_mlp_out            [batch, pos, d_model]
mlp_in            blocks.L.hook_mlp_in             [batch, pos, d_model]
mlp_pre           blocks.L.mlp.hook_pre            [batch, pos, d_mlp]
mlp_post          blocks.L.mlp.hook_post           [batch, pos, d_mlp]
q, k, v, z        blocks.L.attn.hook_{q,k,v,z}     [batch, pos, n_heads, d_head]
result            blocks.L.attn.hook_result        [batch, pos, n_heads, d_model]
pattern, scores   blocks.L.attn.hook_pattern/...   [batch, n_heads, q_pos, k_pos]
================  ===============================  ===============================

Head kinds accept an optional head; the captured tensor is then that head's slice.
Attention-only models have no ``resid_mid``/``mlp_*`` sites.

`Site.parse` also reads the TransformerLens hook names above (``"blocks.3.hook_resid_post"``,
``"blocks.1.attn.hook_z"``), so a user's hook names work wherever a site is asked for, and
``Site.hook_name`` gives the name back.

Grouped-query attention (Llama-family models with ``n_key_value_heads < n_heads``): the ``k`` and
``v`` hooks hold the *key/value* heads, before they are shared among query heads, so ``L1.k.H1``
means KV head 1 (query heads ``h`` with ``h // (n_heads // n_kv_heads) == 1`` read it). Their head
index is validated against ``n_kv_heads``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")
BLOCK_KINDS = RESID_KINDS + ("attn_out", "mlp_out", "mlp_in", "mlp_pre", "mlp_post")
HEAD_KINDS = ("q", "k", "v", "z", "result", "pattern", "scores")
ALL_KINDS = BLOCK_KINDS + HEAD_KINDS
MLP_KINDS = ("resid_mid", "mlp_out", "mlp_in", "mlp_pre", "mlp_post")

_HOOKS = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    "resid_post": "blocks.{L}.hook_resid_post",
    "attn_out": "blocks.{L}.hook_attn_out",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "mlp_in": "blocks.{L}.hook_mlp_in",
    "mlp_pre": "blocks.{L}.mlp.hook_pre",
    "mlp_post": "blocks.{L}.mlp.hook_post",
    "q": "blocks.{L}.attn.hook_q",
    "k": "blocks.{L}.attn.hook_k",
    "v": "blocks.{L}.attn.hook_v",
    "z": "blocks.{L}.attn.hook_z",
    "result": "blocks.{L}.attn.hook_result",
    "pattern": "blocks.{L}.attn.hook_pattern",
    "scores": "blocks.{L}.attn.hook_attn_scores",
}
# axis of the head dimension in the hooked tensor (batch first)
_HEAD_AXIS = {"q": 2, "k": 2, "v": 2, "z": 2, "result": 2, "pattern": 1, "scores": 1}

KV_KINDS = ("k", "v")

_SITE_RE = re.compile(r"^L(\d+)\.([a-z_]+)(?:\.H(\d+))?$")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_KIND_OF_HOOK = {template.split("{L}.", 1)[1]: kind for kind, template in _HOOKS.items()}


class SiteError(ValueError):
    """A site string or value that does not exist (in general or in a given model)."""


@dataclass(frozen=True, order=True)
class Site:
    """Where in a model: ``layer`` (0-based block), ``kind`` (see module doc), optional ``head``."""

    layer: int
    kind: str
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ALL_KINDS:
            raise SiteError(f"unknown site kind {self.kind!r}; valid kinds: {', '.join(ALL_KINDS)}")
        if self.layer < 0:
            raise SiteError(f"layer must be >= 0, got {self.layer}")
        if self.head is not None and self.kind not in HEAD_KINDS:
            raise SiteError(f"kind {self.kind!r} has no heads; head kinds: {', '.join(HEAD_KINDS)}")
        if self.head is not None and self.head < 0:
            raise SiteError(f"head must be >= 0, got {self.head}")

    @classmethod
    def parse(cls, text: "str | Site") -> "Site":
        """Parse ``L3.resid_post`` / ``L1.z.H2`` or a TransformerLens hook name
        (``blocks.3.hook_resid_post``); a `Site` is returned unchanged."""
        if isinstance(text, Site):
            return text
        if not isinstance(text, str):
            raise SiteError(f"a site is a string such as 'L3.resid_post', got {type(text).__name__} {text!r}")
        text = text.strip()
        hook = _HOOK_RE.match(text)
        if hook and hook[2] in _KIND_OF_HOOK:
            return cls(int(hook[1]), _KIND_OF_HOOK[hook[2]])
        m = _SITE_RE.match(text)
        if not m:
            raise SiteError(
                f"cannot parse site {text!r}; expected 'L<layer>.<kind>' or 'L<layer>.<kind>.H<head>' "
                f"(e.g. 'L3.resid_post', 'L1.z.H2') with kind one of: {', '.join(ALL_KINDS)}, "
                f"or a TransformerLens hook name of a block ({', '.join(sorted(_KIND_OF_HOOK))}; "
                f"e.g. 'blocks.3.hook_resid_post')"
            )
        layer, kind, head = m.groups()
        return cls(int(layer), kind, None if head is None else int(head))

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind}" + ("" if self.head is None else f".H{self.head}")

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook point this site reads."""
        return _HOOKS[self.kind].format(L=self.layer)

    @property
    def head_axis(self) -> int | None:
        return _HEAD_AXIS.get(self.kind)

    def select(self, act: Any) -> Any:
        """This site's slice of the full hook tensor (the head's slice for head sites)."""
        if self.head is None:
            return act
        return act.select(self.head_axis, self.head)

    def validate(self, n_layers: int, n_heads: int, attn_only: bool = False,
                 n_kv_heads: int | None = None) -> "Site":
        """Check against a model's shape; the error names the valid kinds and ranges.

        ``n_kv_heads``: key/value heads of a grouped-query attention model (``k`` / ``v`` sites
        index those); ``None`` means ``n_heads``."""
        kinds = valid_kinds(attn_only)
        if self.kind not in kinds:
            raise SiteError(
                f"site {self} does not exist in this model (attention-only={attn_only}); "
                f"valid kinds: {', '.join(kinds)}"
            )
        if not 0 <= self.layer < n_layers:
            raise SiteError(f"site {self}: layer {self.layer} out of range; valid layers 0..{n_layers - 1}")
        heads = n_kv_heads if self.kind in KV_KINDS and n_kv_heads is not None else n_heads
        if self.head is not None and not 0 <= self.head < heads:
            what = "key/value heads" if heads != n_heads else "heads"
            raise SiteError(f"site {self}: head {self.head} out of range; valid {what} 0..{heads - 1}"
                            + (" (grouped-query attention)" if heads != n_heads else ""))
        return self


def valid_kinds(attn_only: bool = False) -> tuple[str, ...]:
    return tuple(k for k in ALL_KINDS if not (attn_only and k in MLP_KINDS))


def list_sites(n_layers: int, attn_only: bool = False, heads: int | None = None,
               kv_heads: int | None = None) -> list[Site]:
    """All sites of a model; head kinds once without head, and per head if ``heads`` is given
    (``k`` / ``v`` per key/value head: ``kv_heads``, default ``heads``)."""
    out: list[Site] = []
    for layer in range(n_layers):
        for kind in valid_kinds(attn_only):
            out.append(Site(layer, kind))
            n = (kv_heads or heads) if kind in KV_KINDS else heads
            if n and kind in HEAD_KINDS:
                out.extend(Site(layer, kind, h) for h in range(n))
    return out
