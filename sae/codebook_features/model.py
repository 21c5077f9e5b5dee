"""Codebook bottlenecks inside a TransformerLens model (Codebook Features, Tamkin et al. 2023).

At each chosen site the activation ``a`` (``attn_out``, ``mlp_out``, ``resid_*``: one vector per
token; ``z``: the heads' outputs, split into ``head_groups`` groups of adjacent heads with one
codebook each) is replaced by the sum of its ``k`` codes nearest by cosine similarity,

    S(a) = top-k_j  <a, c_j> / (||a|| ||c_j||),        â = Σ_{j ∈ S(a)} c_j,

from a codebook ``C = {c_1 .. c_C}``. Each codebook is a `mechscope.sae.codebook.CodebookDictionary`
(the same code as dictionaries trained on frozen activations), so it works on normalised units
``x = s a`` with ``s`` fixed at initialisation, and it *is* a `Dictionary` on raw activations:
`CodebookModel.dictionaries` hands it to the feature browser and the circuit tools.

Placement. The paper (released code, taufeeque9/codebook-features, ``config/fsm_main.yaml``)
puts a codebook on every attention head's output before the output projection (``z``, one
codebook per head: ``head_groups = n_heads``) and one on every MLP output, in every layer, with
``k = 1`` code active in each (TokFSM; 1000 codes each), and trains the whole model with them in
place. ``sites = ("L*.z", "L*.mlp_out")`` (`PAPER_SITES`) asks for that placement: then every
attention and MLP contribution to the residual stream is a code, and the only write into the
residual stream that a forced code cannot replace is the token and position embedding. Their
codebook ranks codes by ``<LN(a), c_j> / ||c_j||``, the cosine up to LN's centring; the sum of
codes is divided by ``k`` (equal to ours at ``k = 1``).

Training the network through the bottleneck (the paper's main method). Selection has no
gradient; the forward value is ``x̂`` and the backward is straight-through (van den Oord et al.
2017, "Neural Discrete Representation Learning"):

    out = x̂ + (x − sg(x)),      ∂L/∂x = ∂L/∂out,      ∂L/∂c_j = Σ_{rows selecting j} ∂L/∂out,

so the language-modelling loss trains the codes and, unchanged, everything upstream. Two
auxiliary terms, each a mean over elements (≈ a fraction of variance, since E x_i² ≈ 1):
the codebook term ``||sg(x) − x̂||²`` pulls codes toward the activations that select them, and
the commitment term ``β ||x − sg(x̂)||²`` pulls activations toward their codes.

Initialisation: spherical k-means (k-means++ seeding with the cosine distance, then Lloyd
iterations with cosine assignment; Hornik et al. 2012) on activations of the model, each code set to its cluster's mean divided by ``k`` (``k`` codes
are summed). Dead-code replacement: a code not selected for ``dead_tokens`` tokens is re-seeded
from a random activation of the last batch (`CodebookDictionary.after_step`).

Forcing codes (steering): at chosen positions the selection becomes the forced codes plus the
nearest ``k − |forced|`` others, i.e. the forced codes replace the weakest selected ones.

Note on layering: this module sits in ``interp`` (the only package that touches TransformerLens)
but builds its codebooks from ``mechscope.sae.codebook`` so that there is one codebook
implementation; the import is deferred to construction.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mechscope.records import checked_fields
from mechscope.interp.capture import hooks_for
from mechscope.interp.models import Model
from mechscope.interp.sites import Site
from mechscope.interp.stream import site_dims
from mechscope.kernels.code import SparseCode
from mechscope.sae.codebook import nearest_codes, spherical_kmeans

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike
    from mechscope.sae.codebook import CodebookDictionary

SITE_KINDS = ("attn_out", "mlp_out", "resid_pre", "resid_mid", "resid_post", "z")
EVERY_LAYER = "L*."  # ``L*.z`` / ``L*.mlp_out``: that kind in every layer (the paper's placement)
PAPER_SITES = ("L*.z", "L*.mlp_out")  # every attention head group and every MLP output, every layer
WEIGHTS, CODEBOOKS, CONFIG = "model.safetensors", "codebooks.safetensors", "codebook_model.json"


@dataclass(frozen=True)
class CodebookSpec:
    """Where the bottlenecks go and their shape (validated once, here and against the model)."""

    sites: tuple[str, ...] = ()
    n_codes: int = 256
    k: int = 1
    head_groups: int = 1
    commitment: float = 0.25
    codebook_coeff: float = 1.0
    dead_tokens: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(str(s) for s in self.sites))
        if not self.sites:
            raise ValueError("CodebookSpec.sites is empty; give sites like 'L0.attn_out', 'L1.mlp_out', 'L0.z'")
        for s in self.sites:
            site = Site.parse(s.replace(EVERY_LAYER, "L0.", 1) if s.startswith(EVERY_LAYER) else s)
            if site.kind not in SITE_KINDS or site.head is not None:
                raise ValueError(f"codebook site {s!r} is not supported; kinds: {', '.join(SITE_KINDS)} "
                                 "(no head suffix: use head_groups for per-head codebooks on 'z'; "
                                 f"'{EVERY_LAYER}KIND' puts one in every layer)")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"CodebookSpec.sites has duplicates: {list(self.sites)}")
        for name in ("n_codes", "k", "head_groups", "dead_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"CodebookSpec.{name} must be a positive integer, got {v!r}")
        if self.k > self.n_codes:
            raise ValueError(f"CodebookSpec.k={self.k} must be <= n_codes={self.n_codes}")
        for name in ("commitment", "codebook_coeff"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CodebookSpec.{name} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CodebookSpec":
        data = checked_fields(cls, data, "codebook")
        return cls(**{k: (tuple(v) if k == "sites" else v) for k, v in data.items()})


def expand_sites(sites: Sequence[str], n_layers: int) -> list[str]:
    """Sites with every ``L*.KIND`` replaced by ``L0.KIND .. L{n-1}.KIND``, ordered by layer then
    by the order given (so ``("L*.z", "L*.mlp_out")`` reads L0.z, L0.mlp_out, L1.z, ...)."""
    out: list[str] = []
    for layer in range(n_layers):
        out += [f"L{layer}.{s[len(EVERY_LAYER):]}" for s in sites if s.startswith(EVERY_LAYER)]
    fixed = [s for s in sites if not s.startswith(EVERY_LAYER)]
    dup = sorted(set(fixed) & set(out))
    if dup:
        raise ValueError(f"codebook sites {dup} are given twice (once through '{EVERY_LAYER}')")
    return sorted(out + fixed, key=lambda s: _forward_order(Site.parse(s)))


_FORWARD = ("resid_pre", "z", "attn_out", "resid_mid", "mlp_out", "resid_post")


def _forward_order(site: Site) -> tuple[int, int]:
    """Where a site's hook runs in the forward pass (layer, then position inside the block)."""
    return site.layer, _FORWARD.index(site.kind)


def _key(site: str) -> str:
    return str(site).replace(".", "__")  # nn.ModuleDict keys cannot contain dots


def _new_codebook(width: int, spec: CodebookSpec, seed: int) -> "CodebookDictionary":
    from mechscope.sae.codebook import CodebookDictionary
    from mechscope.sae.config import CodebookConfig, TrainConfig

    cfg = CodebookConfig(d_in=width, d_dict=spec.n_codes, k=spec.k, codebook_commitment=float(spec.commitment))
    return CodebookDictionary(cfg, TrainConfig(dead_tokens=spec.dead_tokens, b_dec_init="zeros", seed=seed,
                                               progress=False))


class SiteBottleneck(nn.Module):
    """The codebooks of one site: ``[..., width]`` (or ``[..., heads, d_head]``) in and out."""

    def __init__(self, site: Site, width: int, groups: int, spec: CodebookSpec, seed: int) -> None:
        super().__init__()
        if width % groups:
            raise ValueError(f"{site}: width {width} does not split into {groups} head groups")
        self.site, self.groups, self.spec = site, groups, spec
        self.codebooks = nn.ModuleList(_new_codebook(width // groups, spec, seed + g) for g in range(groups))
        self.last_codes: list[Tensor] = []
        self.last_inputs: list[Tensor] = []
        self.aux_terms: dict[str, Tensor] = {}
        # (codes [G, f], positions) entries; nested `CodebookModel.forcing` blocks add entries
        self.forced: tuple[tuple[Tensor, tuple[int, ...] | None], ...] = ()

    def _rows(self, act: Tensor) -> Tensor:
        return act.reshape(*act.shape[:2], self.groups, -1)

    def forward(self, act: Tensor) -> Tensor:
        rows = self._rows(act)
        b, pos = rows.shape[:2]
        outs, self.last_codes, self.last_inputs, terms = [], [], [], []
        for g, cb in enumerate(self.codebooks):
            x = rows[:, :, g].reshape(b * pos, -1) * cb.scale_in
            idx = self._select(cb, x, g, b, pos)
            code = SparseCode(torch.ones(idx.shape, dtype=x.dtype, device=x.device), idx)
            x_hat = cb._decode(code)
            outs.append((x_hat + (x - x.detach())) / cb.scale_out)
            self.last_codes.append(idx.view(b, pos, -1))
            if self.training:
                cb.update_firing(code)
                self.last_inputs.append(x.detach())
                terms.append(((x.detach() - x_hat).pow(2).mean(), (x - x_hat.detach()).pow(2).mean()))
        if terms:
            self.aux_terms = {"codebook": sum(t[0] for t in terms) / len(terms),
                              "commitment": sum(t[1] for t in terms) / len(terms)}
        return torch.stack(outs, 1).view(b, pos, self.groups, -1).reshape(act.shape)

    def _select(self, cb: "CodebookDictionary", x: Tensor, g: int, b: int, pos: int) -> Tensor:
        if not self.forced:
            return cb._encode(x).indices
        with torch.no_grad():
            idx = cb._encode(x).indices.view(b, pos, -1)
            for codes, positions in self.forced:  # later (inner) entries win where they overlap
                at = torch.zeros(pos, dtype=torch.bool, device=x.device)
                at[list(positions) if positions is not None else slice(None)] = True
                if at.any():
                    f = codes[g].to(x.device).expand(b * int(at.sum()), -1)
                    rows = x.view(b, pos, -1)[:, at].reshape(-1, x.shape[-1])
                    idx[:, at] = nearest_codes(rows, cb.W_dec, cb.cfg.k, f).view(b, int(at.sum()), -1)
        return idx.reshape(b * pos, -1)


class CodebookModel(nn.Module):
    """A `Model` whose forward passes go through codebook bottlenecks at ``spec.sites``."""

    def __init__(self, model: "ModelLike", spec: CodebookSpec) -> None:
        super().__init__()
        model = Model.wrap(model)
        self.model, self.spec = model, spec
        self.network = model.module  # registered, so parameters() and train() reach the weights
        self.enabled = True
        self.extra: dict[str, Any] = {}
        self.bottlenecks = nn.ModuleDict()
        for i, name in enumerate(expand_sites(spec.sites, model.n_layers)):
            site = model.site(name)
            if site.kind in ("resid_mid", "mlp_out") and model.attn_only:
                raise ValueError(f"{name}: an attention-only model has no MLP sites")
            groups = spec.head_groups if site.kind == "z" else 1
            if site.kind == "z" and model.n_heads % groups:
                raise ValueError(f"head_groups={groups} must divide n_heads={model.n_heads}")
            width = site_dims(model, [site])[site]
            self.bottlenecks[_key(name)] = SiteBottleneck(site, width, groups, spec, spec.seed + 1000 * i)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def named_bottlenecks(self) -> list[tuple[str, SiteBottleneck]]:
        return [(str(b.site), b) for b in self.bottlenecks.values()]

    def bottleneck(self, name: str) -> SiteBottleneck:
        if _key(name) not in self.bottlenecks:
            names = ", ".join(n for n, _ in self.named_bottlenecks())
            raise ValueError(f"no codebook at {name!r}; codebook sites: {names}")
        return self.bottlenecks[_key(name)]

    # -- running --------------------------------------------------------------------------------
    @contextmanager
    def active(self) -> Iterator[None]:
        """Bottlenecks hooked into the network for the block (none if ``enabled`` is False)."""
        fns = {b.site: b for b in self.bottlenecks.values()} if self.enabled else {}
        with hooks_for(self.model, fns):
            yield

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The same network with every bottleneck bypassed (the activations pass unchanged)."""
        old, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = old

    def forward(self, tokens: Int[Tensor, "b pos"]) -> Float[Tensor, "b pos vocab"]:
        with self.active():
            return self.model(tokens)

    @contextmanager
    def forcing(self, forced: Mapping[str, Sequence[int] | Sequence[Sequence[int]]],
                positions: Sequence[int] | None = None) -> Iterator[None]:
        """Force codes on: ``{site: codes}`` (one list per head group for 'z' sites) at the given
        positions (negative counts from the end of the current input; None = every position).
        Blocks nest: an inner block forces its codes at its positions on top of the outer ones."""
        for name in forced:
            self.bottleneck(name)
        saved = {n: b.forced for n, b in self.named_bottlenecks()}
        try:
            for name, codes in forced.items():
                b = self.bottleneck(name)
                b.forced = b.forced + (self._force_spec(name, codes, positions),)
            yield
        finally:
            for n, b in self.named_bottlenecks():
                b.forced = saved[n]

    def _force_spec(self, name: str, codes: Any, positions: Sequence[int] | None) -> tuple[Tensor, Any]:
        b = self.bottleneck(name)
        per_group = [list(c) for c in codes] if codes and isinstance(codes[0], (list, tuple)) else [list(codes)] * b.groups
        if len(per_group) != b.groups or len({len(c) for c in per_group}) != 1:
            raise ValueError(f"{name}: give one equal-length code list per head group ({b.groups})")
        for c in per_group:
            if not 1 <= len(c) <= self.spec.k or not all(0 <= j < self.spec.n_codes for j in c):
                raise ValueError(f"{name}: forced codes {c} must be 1..k={self.spec.k} indices in "
                                 f"[0, {self.spec.n_codes})")
        return torch.tensor(per_group), (tuple(int(p) for p in positions) if positions is not None else None)

    @torch.no_grad()
    def codes(self, tokens: Int[Tensor, "b pos"]) -> dict[str, Int[Tensor, "b pos groups k"]]:
        """The selected code indices at every site for ``tokens`` (one forward pass)."""
        was = self.training
        self.eval()
        try:
            self(tokens.to(self.device))
        finally:
            self.train(was)
        return {n: torch.stack(b.last_codes, 2).cpu() for n, b in self.named_bottlenecks()}

    # -- training helpers -----------------------------------------------------------------------
    def aux_loss(self) -> Tensor:
        """Codebook + commitment terms of the last training forward pass, averaged over sites."""
        terms = [b.aux_terms for b in self.bottlenecks.values() if b.aux_terms]
        if not terms:
            return torch.zeros(())
        cb = sum(t["codebook"] for t in terms) / len(terms)
        commit = sum(t["commitment"] for t in terms) / len(terms)
        return self.spec.codebook_coeff * cb + self.spec.commitment * commit

    @torch.no_grad()
    def after_step(self, generator: torch.Generator) -> int:
        """Replace dead codes from the last batch; returns how many were replaced."""
        n = 0
        for b in self.bottlenecks.values():
            for cb, x in zip(b.codebooks, b.last_inputs):
                n += int(cb.dead_mask().sum())
                cb.after_step(x, x, generator)
        return n

    @torch.no_grad()
    def init_codebooks(self, tokens: Int[Tensor, "b pos"], kmeans_iters: int = 10,
                       skip_first: bool = True) -> None:
        """Scales and k-means codes from activations of ``tokens``, site by site in layer order
        (earlier bottlenecks already active); ``skip_first`` leaves out position 0 (BOS)."""
        from mechscope.interp.capture import capture

        was = self.training
        self.eval()
        done: dict[Site, SiteBottleneck] = {}
        for _, b in sorted(self.named_bottlenecks(), key=lambda nb: _forward_order(nb[1].site)):
            with hooks_for(self.model, dict(done)):
                act = capture(self.model, tokens, b.site)[b.site]
            rows = b._rows(act[:, 1:] if skip_first else act)
            for g, cb in enumerate(b.codebooks):
                x = rows[:, :, g].reshape(-1, rows.shape[-1])
                cb.init_from_data(x, x)
                gen = torch.Generator().manual_seed(cb.training_config.seed)
                cent = spherical_kmeans(x * cb.scale_in, self.spec.n_codes, kmeans_iters, gen)
                cb.W_dec.copy_(cent / self.spec.k)
            done[b.site] = b
        self.train(was)

    # -- the Dictionary view --------------------------------------------------------------------
    def dictionaries(self) -> dict[str, "CodebookDictionary"]:
        """Each codebook as a `Dictionary` on raw activations, keyed by site (``L0.attn_out``;
        ``L0.z.H2`` for one head per group; ``L0.z.g1`` for group 1 = heads concatenated)."""
        out = {}
        for name, b in self.named_bottlenecks():
            for g, cb in enumerate(b.codebooks):
                if b.groups == 1:
                    key = name
                elif b.groups == self.model.n_heads:
                    key = f"{name}.H{g}"
                else:
                    key = f"{name}.g{g}"
                out[key] = cb
        return out

    # -- files ----------------------------------------------------------------------------------
    def save(self, folder: "str | Path", extra: Mapping[str, Any] | None = None) -> Path:
        """``model.safetensors`` (network), ``codebooks.safetensors``, ``codebook_model.json``."""
        from safetensors.torch import save_file

        from mechscope.files import atomic_path, write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tl_cfg = self.model.config_dict()
        meta = {"spec": asdict(self.spec), "tl_config": tl_cfg, "name": self.model.name,
                "extra": dict(extra or {})}
        for name, module in ((WEIGHTS, self.network), (CODEBOOKS, self.bottlenecks)):
            with atomic_path(folder / name) as tmp:
                save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp))
        if self.model.tokenizer is not None:
            self.model.tokenizer.save_pretrained(str(folder))
        # the config is written last: a folder with it is complete
        write_text(folder / CONFIG, json.dumps(meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: "str | Path", device: str = "cpu") -> "CodebookModel":
        from safetensors.torch import load_file

        from mechscope.interp.models import _local_tokenizer
        from mechscope.tensors import load_checked

        folder = Path(folder)
        if not (folder / CONFIG).exists():
            raise FileNotFoundError(f"{folder} is not a codebook model folder (no {CONFIG})")
        meta = json.loads((folder / CONFIG).read_text())
        model = Model.from_config({**meta["tl_config"], "device": device}, tokenizer=_local_tokenizer(folder),
                                  name=meta["name"], seed=None)
        load_checked(model.module, load_file(str(folder / WEIGHTS), device=device), folder / WEIGHTS)
        cbm = cls(model, CodebookSpec.from_dict(meta["spec"]))
        load_checked(cbm.bottlenecks, load_file(str(folder / CODEBOOKS), device=device), folder / CODEBOOKS)
        cbm.extra = meta.get("extra", {})
        return cbm.eval()


def base_model_copy(model: "ModelLike") -> "Model":
    """An independent copy of a model (fine-tuning through codebooks changes the weights)."""
    import copy

    return copy.deepcopy(Model.wrap(model))


__all__ = ["EVERY_LAYER", "PAPER_SITES", "CodebookModel", "CodebookSpec", "SiteBottleneck", "base_model_copy",
           "expand_sites"]
