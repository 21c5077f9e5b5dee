"""Canonical node ids: one name per model component, whichever method found it.

`node_id` builds them and `parse_node_id` reads them; they name the component, not the method
that found it, so graphs of different methods can be compared node by node::

    embed@7                  the input embedding (token + position) at position 7
    embed.tok / embed.pos    its token and positional parts (attention-SVD splits them)
    L3.H5@7                  head 5 of block 3 (whatever site it was read at: z, result, v)
    L3.attn@7 / L3.mlp@7     a block's whole attention / MLP output
    L3.resid_post@7          a residual-stream state (any resid_pre / resid_mid / resid_post site)
    L3.resid_post.f812@7     feature 812 of the dictionary at site L3.resid_post
    L3.resid_post.err@7      that dictionary's error term
    logit."Romeo"@7          the logit of token " Romeo" (a JSON string: quotes, backslashes and
                             control characters escaped, so any token is safe inside an id)
    logit                    the model's output as the graph's metric reads it (the metric, the
                             prediction)

A node summed over positions has no ``@p``. Head *labels* for people are `head_label`
(``L3H5``, the form the CLI takes); `parse_head` reads both forms.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from mechscope.interp.sites import RESID_KINDS, Site

NODE_KINDS = ("embedding", "head", "mlp", "attention", "feature", "error", "residual", "logit")
EMBED_PARTS = ("embed", "embed.tok", "embed.pos")
_BLOCK_IDS = {"attention": "attn", "mlp": "mlp"}


# -- labels -------------------------------------------------------------------------------------
def head_label(layer: int, head: int) -> str:
    """``L3H5``: how people (and the CLI) write a head."""
    return f"L{layer}H{head}"


def mlp_label(layer: int) -> str:
    return f"MLP{layer}"


_HEAD_TEXT = re.compile(r"^L(\d+)\.?H(\d+)$")


def parse_head(text: str) -> tuple[int, int]:
    """``"L3H5"`` or ``"L3.H5"`` -> ``(3, 5)``."""
    m = _HEAD_TEXT.match(text.strip())
    if not m:
        raise ValueError(f"cannot parse head {text!r}; expected 'L<layer>H<head>', e.g. 'L1H3' "
                         f"(or the node id 'L1.H3')")
    return int(m[1]), int(m[2])


def _site(site: str | None, layer: int | None, what: str) -> Site:
    if site is None:
        raise ValueError(f"a {what} node needs its site (e.g. 'L3.resid_post')")
    s = Site.parse(site)
    if layer is not None and s.layer != layer:
        raise ValueError(f"{what} node at site {site} has layer {layer}, the site says {s.layer}")
    return s


def node_id(kind: str, layer: int | None = None, index: int | None = None, site: str | None = None,
            position: int | None = None, token: str | None = None) -> str:
    """The canonical id of a component (module doc); raises on a node that cannot exist."""
    if kind not in NODE_KINDS:
        raise ValueError(f"unknown node kind {kind!r}; valid: {', '.join(NODE_KINDS)}")
    if position is not None and (not isinstance(position, int) or position < 0):
        raise ValueError(f"position must be an int >= 0 or None, got {position!r}")
    if kind == "embedding":
        body = site or "embed"
        if body not in EMBED_PARTS:
            raise ValueError(f"embedding node site {site!r}; valid: {', '.join(EMBED_PARTS)}")
    elif kind == "logit":
        body = "logit" if token is None else f"logit.{json.dumps(str(token), ensure_ascii=False)}"
    elif kind in ("head", "attention", "mlp"):
        if layer is None or layer < 0:
            raise ValueError(f"a {kind} node needs a block layer >= 0, got {layer!r}")
        if site is not None:
            _site(site, layer, kind)
        if kind == "head":
            if index is None:
                raise ValueError(f"a head node needs its head index (layer {layer})")
            body = f"L{layer}.H{index}"
        else:
            body = f"L{layer}.{_BLOCK_IDS[kind]}"
    else:
        s = _site(site, layer, kind)
        if kind == "residual":
            if s.kind not in RESID_KINDS or s.head is not None:
                raise ValueError(f"a residual node is at a residual site ({', '.join(RESID_KINDS)}), "
                                 f"got {site}")
            body = str(s)
        elif kind == "feature":
            if index is None:
                raise ValueError(f"a feature node needs its index (site {site})")
            body = f"{s}.f{index}"
        else:
            body = f"{s}.err"
    return body if position is None else f"{body}@{position}"


class NodeKey(NamedTuple):
    """What a canonical id says: ``layer`` is -1 for embeddings and None for logits (the graph's
    ``n_layers``)."""

    kind: str
    layer: int | None
    index: int | None
    site: str | None
    position: int | None
    token: str | None


_BODY = [("head", re.compile(r"^L(\d+)\.H(\d+)$")), ("block", re.compile(r"^L(\d+)\.(attn|mlp)$")),
         ("feature", re.compile(r"^(L\d+\.[a-z_]+(?:\.H\d+)?)\.f(\d+)$")),
         ("error", re.compile(r"^(L\d+\.[a-z_]+(?:\.H\d+)?)\.err$"))]
_EXAMPLES = "e.g. L3.H5@7, L3.mlp, L3.resid_post.f812@7, L3.resid_post.err, embed@0, logit.\" Romeo\"@7"


def _position(text: str, rest: str) -> int | None:
    if rest == "":
        return None
    if re.fullmatch(r"@\d+", rest):
        return int(rest[1:])
    raise ValueError(f"not a node id: {text!r} (bad position part {rest!r}); {_EXAMPLES}")


def parse_node_id(text: str) -> NodeKey:
    """Inverse of `node_id`: ``parse_node_id(node_id(...))`` gives back its arguments."""
    if text == "logit" or text.startswith(("logit.", "logit@")):
        rest, token = text[5:], None
        if rest.startswith("."):
            try:
                token, end = json.JSONDecoder().raw_decode(rest, 1)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a node id: {text!r}: the token must be a JSON string "
                                 f"({exc.msg})") from exc
            if not isinstance(token, str):
                raise ValueError(f"not a node id: {text!r}: the token must be a JSON string")
            rest = rest[end:]
        return NodeKey("logit", None, None, None, _position(text, rest), token)
    body, at, pos = text.rpartition("@")
    if not at:
        body, pos = text, None
    position = None if pos is None else _position(text, "@" + pos)
    if body in EMBED_PARTS:
        return NodeKey("embedding", -1, None, body, position, None)
    for kind, rx in _BODY:
        m = rx.match(body)
        if m and kind == "head":
            return NodeKey("head", int(m[1]), int(m[2]), None, position, None)
        if m and kind == "block":
            return NodeKey("attention" if m[2] == "attn" else "mlp", int(m[1]), None, None, position, None)
        if m:
            site = Site.parse(m[1])
            return NodeKey(kind, site.layer, int(m[2]) if kind == "feature" else None, str(site),
                           position, None)
    try:
        site = Site.parse(body)
    except ValueError:
        site = None
    if site is None or site.kind not in RESID_KINDS or site.head is not None:
        raise ValueError(f"not a node id: {text!r}; {_EXAMPLES}")
    return NodeKey("residual", site.layer, None, str(site), position, None)


def without_position(nid: str) -> str:
    """The id of the same component summed over positions (``L3.H5@7`` -> ``L3.H5``)."""
    k = parse_node_id(nid)
    return node_id(k.kind, k.layer, k.index, k.site, None, k.token)
