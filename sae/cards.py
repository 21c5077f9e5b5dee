"""`FeatureCard`: what a browser shows of one feature — strings and numbers only.

Cards are computed by `mechscope.sae.features.compute_feature_cards` and saved as one JSON file
(`save_cards` / `load_cards`), so the apps need no model and no tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mechscope.records import checked_fields
from mechscope.files import write_json

CARDS_FORMAT = "mechscope.feature_cards"
CARDS_VERSION = 1


# ---------------------------------------------------------------------------------------------
# the values
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """A window of decoded tokens, the feature's activation on each, and the focus token."""

    tokens: tuple[str, ...]
    activations: tuple[float, ...]
    max_index: int
    quantile: float | None = None  # rank quantile among the uniform sample (quantile samples only)
    ids: tuple[int, ...] = ()  # token ids of ``tokens`` (byte tokens share look-alike strings)

    @property
    def activation(self) -> float:
        return self.activations[self.max_index]


@dataclass(frozen=True)
class FeatureCard:
    """What a browser shows of one feature (strings and numbers only; JSON round-trip)."""

    index: int
    density: float
    mean_activation: float
    max_activation: float
    n_tokens: int
    top_contexts: tuple[Context, ...] = ()
    quantile_contexts: tuple[Context, ...] = ()
    hist_edges: tuple[float, ...] = ()
    hist_counts: tuple[int, ...] = ()
    top_logits: tuple[tuple[str, float], ...] = ()  # most promoted output tokens, descending
    bottom_logits: tuple[tuple[str, float], ...] = ()  # most suppressed, ascending
    neighbours: tuple[tuple[int, float], ...] = ()  # (feature, decoder cosine), descending
    top_logit_ids: tuple[int, ...] = ()  # token ids of top_logits / bottom_logits
    bottom_logit_ids: tuple[int, ...] = ()
    logit_hist_edges: tuple[float, ...] = ()  # histogram of d_i · W_U over the whole vocabulary
    logit_hist_counts: tuple[int, ...] = ()
    dictionary: str = ""
    site: str = ""
    model: str = ""

    @property
    def dead(self) -> bool:
        return self.density == 0.0

    def to_dict(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies every float and dominates writing large browsers
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("top_contexts", "quantile_contexts"):
            d[key] = [{"tokens": c.tokens, "activations": c.activations, "max_index": c.max_index,
                       "quantile": c.quantile, "ids": c.ids} for c in d[key]]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureCard":
        d = checked_fields(cls, data, "FeatureCard")
        for key in ("top_contexts", "quantile_contexts"):
            d[key] = tuple(Context(tuple(c["tokens"]), tuple(float(a) for a in c["activations"]),
                                   int(c["max_index"]), c.get("quantile"), tuple(c.get("ids", ())))
                           for c in d.get(key, ()))
        for key in ("hist_edges", "hist_counts", "top_logit_ids", "bottom_logit_ids", "logit_hist_edges",
                    "logit_hist_counts"):
            d[key] = tuple(d.get(key, ()))
        for key in ("top_logits", "bottom_logits", "neighbours"):
            d[key] = tuple((a, b) for a, b in d.get(key, ()))
        return cls(**d)


def save_cards(cards: Sequence[FeatureCard], path: "str | Path") -> Path:
    """Write cards as one JSON file, atomically (temp file + rename)."""
    return write_json(path, {"format": CARDS_FORMAT, "version": CARDS_VERSION,
                             "cards": [c.to_dict() for c in cards]})


def load_cards(path: "str | Path") -> list[FeatureCard]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != CARDS_FORMAT or data.get("version") != CARDS_VERSION:
        raise ValueError(f"{path} is not a {CARDS_FORMAT} v{CARDS_VERSION} file "
                         f"(format={data.get('format')!r}, version={data.get('version')!r})")
    return [FeatureCard.from_dict(c) for c in data["cards"]]
