"""Feature statistics streamed over a token stream, summarised as `FeatureCard`s.

For a dictionary with code ``f(x) ∈ R^{d_dict}`` read at a site, and ``N`` token positions
``t = 1..N`` of a token stream (positions the keep-mask drops, e.g. BOS, are not counted), each
feature ``i`` gets, in one pass and without storing all activations:

* density ``ρ_i = |{t : f_i(t) > 0}| / N`` and, over the firing positions, the mean and max
  activation (a feature *fires* where its value is positive; signed codes are summarised by
  their positive part, as feature dashboards do);
* top contexts: the ``n_top`` largest ``f_i(t)`` with a window of decoded tokens around ``t``
  and the feature's activation on every token of the window (Bricken et al. 2023, "Towards
  Monosemanticity", feature visualisations);
* quantile samples: a uniform sample of ``n_samples`` firing positions drawn by bottom-k
  sampling (every firing event gets a key ``u ~ U(0, 1)``; the ``n_samples`` smallest keys are
  kept, which is a uniform sample without replacement and merges across batches like a top-k),
  then sorted by activation, each labelled with its rank quantile among the sample, so the
  browser shows what the feature does at every activation level, not only at its maximum;
* an activation histogram of the firing values with edges ``j·M_i/B`` (``B`` bins). ``M_i`` is a
  power of two that doubles when a larger value arrives; doubling merges adjacent bin pairs,
  so the counts are exactly those of a histogram with the final edges (no re-binning error);
* output tokens the decoder direction ``d_i`` promotes / suppresses: the largest and smallest
  entries of the direct logit effect ``d_i W_U`` (the "logit weights" of Bricken et al.; the
  final LayerNorm's scale is ignored, which leaves the ranking unchanged up to its mean);
  and a histogram of ``d_i W_U`` over the whole vocabulary (sae_vis's logit histogram);
* neighbours: the features with the largest cosine similarity of decoder directions.

Token strings come from `mechscope.sae.token_text.token_strings` (byte tokens as ``<0xE2>``)
and travel with their ids.

`FeatureStats` is the accumulator (tensors only, testable against a brute-force reference);
`compute_feature_cards` runs model + dictionary over a token stream and decodes strings, so a
`FeatureCard` (in `mechscope.sae.cards`) holds strings and numbers only and the apps need no
model or tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechscope.interp.models import Model
from mechscope.interp.tokens import window_batches
from mechscope.sae.adapters import as_dictionary
from mechscope.sae.cards import Context, FeatureCard
from mechscope.sae.dictionary import DictionaryLike
from mechscope.sae.token_text import token_strings

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike
    from mechscope.interp.sites import Site
    from mechscope.sae.dictionary import Dictionary

# ---------------------------------------------------------------------------------------------
# the streaming accumulator
# ---------------------------------------------------------------------------------------------
class FeatureStats:
    """Streaming per-feature statistics; feed ``update`` with batches of windows."""

    def __init__(self, d_dict: int, n_top: int = 10, n_samples: int = 12, left: int = 12,
                 right: int = 4, n_bins: int = 64, seed: int = 0) -> None:
        for name, v, lo in (("d_dict", d_dict, 1), ("n_top", n_top, 1), ("n_samples", n_samples, 0),
                            ("left", left, 0), ("right", right, 0), ("n_bins", n_bins, 1)):
            if int(v) < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.d_dict, self.n_top, self.n_samples = d_dict, n_top, n_samples
        self.left, self.right, self.n_bins = left, right, n_bins
        self.gen = torch.Generator().manual_seed(seed)
        D, W = d_dict, left + right + 1
        self.n_tokens = 0
        self.count = torch.zeros(D, dtype=torch.int64)
        self.total = torch.zeros(D, dtype=torch.float64)
        self.max = torch.zeros(D)
        self.hist = torch.zeros(D, n_bins, dtype=torch.int64)
        self.scale = torch.zeros(D)  # histogram range [0, scale]; 0 until the feature fires
        # top buffers: value (−inf = empty), window tokens (−1 = outside the sequence), window acts
        self.top = (torch.full((n_top, D), -math.inf), torch.full((n_top, D, W), -1, dtype=torch.int64),
                    torch.zeros(n_top, D, W))
        # sample buffers: key (+inf = empty; stored negated so merging is a top-k), tokens, acts
        self.sample = (torch.full((n_samples, D), -math.inf),
                       torch.full((n_samples, D, W), -1, dtype=torch.int64), torch.zeros(n_samples, D, W))

    def update(self, tokens: Int[Tensor, "b n"], acts: Float[Tensor, "b n d"],
               keep: Bool[Tensor, "b n"] | None = None) -> None:
        """Add a batch: ``acts[s, p, i]`` is feature i at position p of window s; ``keep`` masks
        the positions that count (context windows still show every token)."""
        b, n, D = acts.shape
        if D != self.d_dict or tokens.shape != (b, n):
            raise ValueError(f"expected tokens [b, n] and acts [b, n, {self.d_dict}], "
                             f"got {tuple(tokens.shape)} and {tuple(acts.shape)}")
        acts, tokens = acts.detach().float().cpu(), tokens.cpu()
        keep = torch.ones(b, n, dtype=torch.bool) if keep is None else keep.cpu().bool()
        flat = acts.masked_fill(~keep[..., None], 0.0).reshape(b * n, D)
        fires = flat > 0
        self.n_tokens += int(keep.sum())
        self.count += fires.sum(0)
        self.total += flat.clamp_min(0).sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, flat.max(0).values.clamp_min(0))
        self._histogram(flat, fires)
        score = flat.masked_fill(~fires, -math.inf)
        self.top = self._merge(self.top, score, tokens, acts)
        if self.n_samples:
            key = torch.rand(flat.shape, generator=self.gen).masked_fill(~fires, math.inf)
            self.sample = self._merge(self.sample, -key, tokens, acts)

    def _merge(self, buf: tuple[Tensor, Tensor, Tensor], score: Float[Tensor, "rows d"],
               tokens: Tensor, acts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Keep, per feature, the buffer rows with the largest ``score`` among buffer + batch."""
        K, n = buf[0].shape[0], tokens.shape[1]
        vals, rows = score.topk(min(K, score.shape[0]), dim=0)
        s, p = rows // n, rows % n
        pos = p[..., None] + torch.arange(-self.left, self.right + 1)  # [k, D, W]
        inside = (pos >= 0) & (pos < n)
        pos = pos.clamp(0, n - 1)
        feat = torch.arange(self.d_dict)[None, :, None]
        win_tok = tokens[s[..., None], pos].masked_fill(~inside, -1)
        win_act = acts[s[..., None], pos, feat].masked_fill(~inside, 0.0)
        all_v = torch.cat([buf[0], vals])
        best_v, pick = all_v.topk(K, dim=0)
        idx = pick[..., None].expand(-1, -1, win_tok.shape[-1])
        return (best_v, torch.cat([buf[1], win_tok]).gather(0, idx),
                torch.cat([buf[2], win_act]).gather(0, idx))

    def _histogram(self, flat: Tensor, fires: Tensor) -> None:
        B = self.n_bins
        m = flat.max(0).values
        grow = (m > self.scale) & (m > 0)
        if grow.any():
            new = torch.exp2(torch.ceil(torch.log2(m)))
            new = torch.where(new < m, new * 2, new)
            base = torch.where(self.scale > 0, self.scale, new)
            doublings = torch.where(grow, torch.round(torch.log2(torch.maximum(new, base) / base)),
                                    torch.zeros_like(m)).long()
            for step in range(int(doublings.max())):
                rows = doublings > step
                merged = torch.zeros(int(rows.sum()), B, dtype=torch.int64)
                merged.index_add_(1, torch.arange(B) // 2, self.hist[rows])  # old bin k -> k // 2
                self.hist[rows] = merged
            self.scale = torch.where(grow, torch.maximum(new, base), self.scale)
        if fires.any():
            r, f = fires.nonzero(as_tuple=True)
            # B / scale is exact when both are powers of two, so bin edges match j·scale/B exactly
            b = torch.floor(flat[r, f] * (B / self.scale[f])).long().clamp(0, B - 1)
            self.hist.view(-1).index_add_(0, f * B + b, torch.ones_like(b))

    def histogram(self, i: int) -> tuple[list[float], list[int]]:
        """Bin edges and counts of feature i's firing values (trailing empty bins dropped)."""
        counts = self.hist[i].tolist()
        if self.scale[i] <= 0:
            return [], []
        last = max(j for j, c in enumerate(counts) if c) + 1
        width = float(self.scale[i]) / self.n_bins
        return [j * width for j in range(last + 1)], counts[:last]

    def mean(self) -> Float[Tensor, "d"]:
        return (self.total / self.count.clamp_min(1)).float()

    def density(self) -> Float[Tensor, "d"]:
        return self.count.double().div(max(self.n_tokens, 1)).float()


# ---------------------------------------------------------------------------------------------
# decoder-side statistics
# ---------------------------------------------------------------------------------------------
def logit_effects(directions: Float[Tensor, "d_dict d_model"], W_U: Float[Tensor, "d_model d_vocab"],
                  k: int, chunk: int = 1024) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k and bottom-k of ``directions @ W_U`` per feature: (top values, top token ids,
    bottom values ascending, bottom ids), each ``[d_dict, k]``; computed in feature chunks so
    ``[d_dict, d_vocab]`` is never held at once."""
    if directions.shape[1] != W_U.shape[0]:
        raise ValueError(f"decoder directions have width {directions.shape[1]} but the unembedding "
                         f"expects d_model={W_U.shape[0]}: logit effects need a residual-width output site")
    k = min(k, W_U.shape[1])
    parts = []
    for lo in range(0, directions.shape[0], chunk):
        eff = directions[lo:lo + chunk].float() @ W_U.float()
        top, bot = eff.topk(k, dim=1), eff.topk(k, dim=1, largest=False)
        parts.append((top.values, top.indices, bot.values, bot.indices))
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def logit_histograms(directions: Float[Tensor, "d_dict d_model"], W_U: Float[Tensor, "d_model d_vocab"],
                     n_bins: int, chunk: int = 1024) -> tuple[Float[Tensor, "d_dict edges"], Int[Tensor, "d_dict bins"]]:
    """Per feature, a histogram of its direct logit effect ``d_i W_U`` over the whole vocabulary
    (sae_vis's logit histogram): ``n_bins`` equal bins from the row's min to max (edges
    ``[d_dict, n_bins + 1]``, counts ``[d_dict, n_bins]``, each row summing to ``d_vocab``)."""
    edges, counts = [], []
    for lo in range(0, directions.shape[0], chunk):
        eff = directions[lo:lo + chunk].float() @ W_U.float()
        mn, mx = eff.min(dim=1, keepdim=True).values, eff.max(dim=1, keepdim=True).values
        width = (mx - mn).clamp_min(1e-12) / n_bins
        b = ((eff - mn) / width).floor().long().clamp(0, n_bins - 1)  # the max lands in the last bin
        c = torch.zeros(eff.shape[0], n_bins, dtype=torch.int64)
        c.scatter_add_(1, b, torch.ones_like(b))
        edges.append(mn + width * torch.arange(n_bins + 1, dtype=eff.dtype))
        counts.append(c)
    return torch.cat(edges), torch.cat(counts)


def decoder_neighbours(directions: Float[Tensor, "d_dict d_out"], k: int,
                       chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """The k other features with the largest decoder cosine similarity: (cosines, indices)."""
    D = directions.shape[0]
    k = min(k, D - 1)
    unit = torch.nn.functional.normalize(directions.float(), dim=1)
    vals, idx = [], []
    for lo in range(0, D, chunk):
        cos = unit[lo:lo + chunk] @ unit.T
        rows = torch.arange(lo, min(lo + chunk, D))
        cos[rows - lo, rows] = -math.inf  # a feature is not its own neighbour
        top = cos.topk(k, dim=1)
        vals.append(top.values)
        idx.append(top.indices)
    return torch.cat(vals), torch.cat(idx)


# ---------------------------------------------------------------------------------------------
# running model + dictionary over a token stream
# ---------------------------------------------------------------------------------------------
def _keep_fn(model: "Model", stream: Any, keep_mask: Callable | None) -> Callable[[Tensor], Tensor]:
    if keep_mask is not None:
        return keep_mask
    if hasattr(stream, "keep_mask"):
        return stream.keep_mask
    bos = model.bos_id
    if bos is None:
        return lambda t: torch.ones_like(t, dtype=torch.bool)
    return lambda t: t != bos


def accumulate_feature_stats(model: "ModelLike", dictionary: "DictionaryLike", site: "str | Site",
                             token_stream: Iterable[Tensor], n_tokens: int, *, batch_size: int = 8,
                             keep_mask: Callable[[Tensor], Tensor] | None = None,
                             **stats_kwargs: Any) -> FeatureStats:
    """Stream ``n_tokens`` positions through model → site → ``dictionary.encode``."""
    from mechscope.interp.capture import capture

    model, dictionary = Model.wrap(model), as_dictionary(dictionary)
    if n_tokens < 1 or batch_size < 1:
        raise ValueError(f"n_tokens and batch_size must be >= 1, got {n_tokens}, {batch_size}")
    site = model.site(site)
    stats = FeatureStats(dictionary.d_dict, **stats_kwargs)
    keep = _keep_fn(model, token_stream, keep_mask)
    for tokens in window_batches(token_stream, batch_size, n_tokens):
        x = capture(model, tokens, site)[site]
        if x.shape[-1] != dictionary.d_in:
            raise ValueError(f"site {site} has width {x.shape[-1]} but the dictionary expects "
                             f"d_in={dictionary.d_in}")
        with torch.no_grad():
            code = dictionary.encode(x.reshape(-1, x.shape[-1]))
        acts = code.dense(dictionary.d_dict).reshape(*tokens.shape, -1)
        stats.update(tokens, acts, keep(tokens))
    if stats.n_tokens == 0:
        raise ValueError("the token stream gave no (kept) tokens")
    return stats


def compute_feature_cards(model: "ModelLike", dictionary: "DictionaryLike", site: "str | Site",
                          token_stream: Iterable[Tensor], n_tokens: int, *, batch_size: int = 8,
                          n_top: int = 10, n_samples: int = 12, left: int = 12, right: int = 4,
                          n_bins: int = 64, n_logits: int = 10, n_neighbours: int = 8, seed: int = 0,
                          keep_mask: Callable[[Tensor], Tensor] | None = None,
                          dictionary_name: str = "") -> list[FeatureCard]:
    """One `FeatureCard` per feature from ``n_tokens`` positions of ``token_stream``.

    ``keep_mask(tokens) -> bool mask`` selects the positions that count (default: the stream's
    own ``keep_mask`` if it has one, else every token but the model's `bos_id`). Logit effects
    are left empty when the dictionary's output width is not the model's ``d_model``.
    """
    model, dictionary = Model.wrap(model), as_dictionary(dictionary)
    stats = accumulate_feature_stats(model, dictionary, site, token_stream, n_tokens,
                                     batch_size=batch_size, keep_mask=keep_mask, n_top=n_top,
                                     n_samples=n_samples, left=left, right=right, n_bins=n_bins, seed=seed)
    directions = dictionary.directions.detach().cpu()
    logits = None
    if directions.shape[1] == model.d_model and n_logits > 0:
        logits = logit_effects(directions, model.W_U.detach().cpu(), n_logits)
        logit_hist = logit_histograms(directions, model.W_U.detach().cpu(), n_bins)
    neigh = decoder_neighbours(directions, n_neighbours) if n_neighbours > 0 and dictionary.d_dict > 1 else None
    vocab = _Vocab(model)
    names = dict(dictionary=dictionary_name or type(dictionary).__name__, site=str(model.site(site)),
                 model=model.name)
    density, mean = stats.density(), stats.mean()
    cards = []
    for i in range(dictionary.d_dict):
        edges, counts = stats.histogram(i)
        extra: dict[str, Any] = {}
        if logits is not None:
            extra["top_logits"] = tuple(zip(vocab(logits[1][i]), logits[0][i].tolist()))
            extra["bottom_logits"] = tuple(zip(vocab(logits[3][i]), logits[2][i].tolist()))
            extra["top_logit_ids"] = tuple(logits[1][i].tolist())
            extra["bottom_logit_ids"] = tuple(logits[3][i].tolist())
            extra["logit_hist_edges"] = tuple(logit_hist[0][i].tolist())
            extra["logit_hist_counts"] = tuple(logit_hist[1][i].tolist())
        if neigh is not None:
            extra["neighbours"] = tuple(zip(neigh[1][i].tolist(), neigh[0][i].tolist()))
        cards.append(FeatureCard(
            index=i, density=float(density[i]), mean_activation=float(mean[i]),
            max_activation=float(stats.max[i]), n_tokens=stats.n_tokens,
            top_contexts=_contexts(stats.top, i, stats.left, vocab),
            quantile_contexts=_contexts(stats.sample, i, stats.left, vocab, quantiles=True),
            hist_edges=tuple(edges), hist_counts=tuple(counts), **extra, **names))
    return cards


class _Vocab:
    """Token id → string through the model's tokenizer, decoding each id once."""

    def __init__(self, model: "Model") -> None:
        self.model, self.cache = model, {}

    def __call__(self, ids: Iterable[int] | Tensor) -> list[str]:
        ids = [int(t) for t in ids]
        new = sorted({t for t in ids if t not in self.cache})
        if new:
            self.cache.update(zip(new, token_strings(self.model.tokenizer, new)))
        return [self.cache[t] for t in ids]


def _contexts(buf: tuple[Tensor, Tensor, Tensor], i: int, left: int, vocab: _Vocab,
              quantiles: bool = False) -> tuple[Context, ...]:
    score, toks, acts = buf
    filled = torch.isfinite(score[:, i]).nonzero().flatten().tolist()
    out = []
    for r in filled:
        inside = (toks[r, i] >= 0).nonzero().flatten()
        lo, hi = int(inside[0]), int(inside[-1]) + 1
        ids = tuple(toks[r, i, lo:hi].tolist())
        out.append(Context(tuple(vocab(ids)), tuple(acts[r, i, lo:hi].tolist()), left - lo, ids=ids))
    if quantiles:  # sample order is random: sort by activation and label each with its rank quantile
        out.sort(key=lambda c: -c.activation)
        m = len(out)
        out = [Context(c.tokens, c.activations, c.max_index, 1.0 - (j + 0.5) / m, c.ids) for j, c in enumerate(out)]
    return tuple(out)
