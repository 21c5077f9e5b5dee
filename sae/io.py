"""Dictionary folders: save SAELens-compatible folders, load mechscope, SAELens and sparsify ones.

A saved folder holds
- ``sae_weights.safetensors``: weights in raw activation units (the normalisation scales folded
  in, see below) with SAELens 6.x key names and layout: ``W_enc [d_in, d_sae]`` (the transpose of
  ours), ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, and ``threshold [d_sae]``
  for JumpReLU;
- ``cfg.json``: SAELens's config (``architecture``, ``d_in``, ``d_sae``, ``d_out`` for
  transcoders, ``k``, ``apply_b_dec_to_input``, ``normalize_activations: "none"``, ``metadata``
  with ``model_name``, ``hook_name`` (``hook_name_out`` for transcoders), ``context_size`` and
  the installed SAELens version), so ``sae_lens.SAE.load_from_disk(folder)`` gives the SAELens
  class with the same encode/decode as mechscope: ``topk``, ``standard`` (relu), ``jumprelu``
  (batch-top-k and Matryoshka batch-top-k too, as SAELens saves them: one global threshold),
  ``gated``, ``transcoder`` (relu
  transcoders), ``jumprelu_transcoder`` (jumprelu and batch-top-k transcoders),
  ``matching_pursuit``. Top-k transcoders and codebooks have no SAELens class and get no
  cfg.json (mechscope.json says ``sae_lens_architecture: null``); SAELens' skip transcoders have
  no mechscope counterpart;
- ``mechscope.json``: our own metadata (format, architecture, the `DictionaryConfig`, the
  `TrainConfig` it was trained with, scales, whether rows were saved unit-norm).

What each architecture saves (its SAELens names, extra tensors such as thresholds, how its
decoder rows may be normalised) lives on its class (`SparseDictionary.folded_weights` /
``weight_shapes`` / ``load_folded`` / ``unfold_scales`` / ``saelens_architecture`` /
``saelens_transcoder`` / ``unit_norm_export``); this module only reads and writes folders.

Unit-norm export (``save_dictionary(..., unit_norm_decoder=True)``): latent i's decoder row is
divided by its norm n_i and its encoder column, encoder bias and threshold multiplied by it, so
codes become ``n_i f_i`` and reconstructions are unchanged (`unit_norm_rows`).

Folding the normalisation ``x̃ = s·x`` (s_in = s_out = s for an SAE): since the dictionary sees
``(s x − b) W_encᵀ + b_enc`` and outputs ``(f W_dec + b)/s``, saving ``W_enc·s``, ``W_dec/s``,
``b_dec/s`` gives the same function on raw activations with no scale.

`load_dictionary` reads any of: a mechscope folder, a SAELens folder (``cfg.json`` +
``sae_weights.safetensors``; topk, standard, jumprelu, batchtopk, transcoder,
jumprelu_transcoder), or a sparsify (EleutherAI) folder (``cfg.json`` + ``sae.safetensors`` with
``encoder.weight [m, d_in]``, ``encoder.bias``, ``W_dec [m, d_out]``, ``b_dec``; top-k on
``relu(encoder(x − b_dec))``, no centring when ``transcode``; the ``groupmax`` activation and
skip connections are refused). A dictionary loaded from SAELens or sparsify has its
`DictionaryConfig` and a `Provenance`, and no `TrainConfig` (``train_cfg`` is None). This is the
only module that imports sae_lens, and only in `load_sae_lens`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechscope.files import atomic_path, write_json
from mechscope.sae.base import SparseDictionary
from mechscope.sae.config import CONFIGS, RunConfig, TrainConfig, dictionary_config
from mechscope.sae.factory import build_dictionary, dictionary_classes
from mechscope.tensors import check_state_dict

FORMAT = 2  # 1: one flat "config" holding every architecture's fields (still read)
META, SL_CFG, SL_WEIGHTS, SPARSIFY_WEIGHTS = "mechscope.json", "cfg.json", "sae_weights.safetensors", "sae.safetensors"


class DictionaryFileError(ValueError):
    """A dictionary folder that is missing, corrupt or inconsistent."""


@dataclass(frozen=True)
class Provenance:
    """Where a loaded dictionary came from: ``source`` is mechscope, sae_lens or sparsify;
    ``metadata`` is what the folder says about itself (SAELens metadata, sparsify cfg.json)."""

    source: str
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def folded_weights(model: SparseDictionary) -> dict[str, torch.Tensor]:
    """The model's weights in raw units, SAELens key names and layout."""
    return {k: v.detach().contiguous().float() for k, v in model.folded_weights().items()}


def save_dictionary(model: SparseDictionary, path: str | Path, metadata: dict[str, Any] | None = None,
                    *, unit_norm_decoder: bool = False) -> Path:
    """Write ``path/{sae_weights.safetensors, mechscope.json[, cfg.json]}``; returns ``path``.

    ``metadata`` is what the dictionary was trained on, in SAELens' metadata names
    (``model_name``, ``context_size``, ``prepend_bos``, ``dataset_path``, ...); it goes into both
    configs. With ``unit_norm_decoder`` the decoder rows are saved with norm 1 and their norms
    folded into the encoder and the codes (see `unit_norm_rows`): reconstructions are unchanged,
    codes are multiplied by the row norms.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = folded_weights(model)
    if unit_norm_decoder:
        weights = unit_norm_rows(model, weights)
    sl_arch = saelens_architecture(model)
    with atomic_path(path / SL_WEIGHTS) as tmp:
        save_file(weights, str(tmp))
    train = model.train_cfg.to_dict() if model.train_cfg is not None else None
    meta = {"format": FORMAT, "architecture": model.architecture, "dictionary": model.cfg.to_dict(),
            "train": train, "b_dec_to_input": model.b_dec_to_input,
            "folded_scales": [float(model.scale_in), float(model.scale_out)],
            "unit_norm_decoder": unit_norm_decoder, "sae_lens_architecture": sl_arch, "metadata": metadata or {}}
    write_json(path / META, meta, indent=2)
    if sl_arch is not None:
        write_json(path / SL_CFG, _saelens_cfg(model, sl_arch, metadata or {}), indent=2)
    elif (path / SL_CFG).exists():  # a stale SAELens config of an earlier save
        (path / SL_CFG).unlink()
    return path


def saelens_architecture(model: SparseDictionary) -> str | None:
    """The SAELens class name the folder is written for: the architecture's SAE or transcoder
    class; None where SAELens 6.54 has none (top-k transcoders, codebooks)."""
    if model.cfg.transcoder:
        return model.saelens_transcoder
    return model.saelens_architecture if model.d_in == model.d_out else None


@torch.no_grad()
def unit_norm_rows(model: SparseDictionary, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Folded weights with decoder rows of norm 1: with ``n_i = ||W_dec,i||``, latent i's
    encoder column, ``b_enc,i`` and threshold are multiplied by ``n_i`` and its row divided by it,
    so its code becomes ``n_i f_i`` and ``Σ_i f_i W_dec,i`` is unchanged. Exact for codes that are
    positively homogeneous in their own pre-activation (``unit_norm_export = "any"``); for ranked
    codes (top-k) only when all norms are equal, else refused; rows of norm 0 stay as they are."""
    how = model.unit_norm_export
    if how is None:
        supported = sorted(a for a, c in dictionary_classes().items() if c.unit_norm_export)
        raise ValueError(f"{model.architecture} dictionaries cannot be exported with unit-norm decoder rows; "
                         f"supported: {', '.join(supported)}")
    n = t["W_dec"].norm(dim=-1)
    if how == "atoms":
        return t
    live = n[n > 0]
    if how == "uniform" and live.numel() and float(live.max() - live.min()) > 1e-6 * float(live.max()):
        raise ValueError(f"{model.architecture}: latents are ranked against each other, so decoder rows "
                         f"can be normalised only when their norms are equal; they range "
                         f"{float(live.min()):.4g}..{float(live.max()):.4g}")
    n = torch.where(n > 0, n, torch.ones_like(n))
    out = {**t, "W_dec": t["W_dec"] / n[:, None], "W_enc": t["W_enc"] * n, "b_enc": t["b_enc"] * n}
    if "threshold" in t:
        out["threshold"] = t["threshold"] * n
    return out


def _saelens_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return None


def _saelens_cfg(model: SparseDictionary, arch: str, metadata: dict[str, Any]) -> dict[str, Any]:
    meta = {"sae_lens_version": _saelens_version(), "sae_lens_training_version": None,
            "model_name": None, "hook_name": _hook_name(model.cfg.site_in), "context_size": None}
    extra: dict[str, Any] = {}
    if model.cfg.transcoder:
        meta["hook_name_out"] = _hook_name(model.cfg.site_out)
        extra["d_out"] = model.d_out
    return {
        "architecture": arch, "d_in": model.d_in, "d_sae": model.d_dict,
        "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": model.b_dec_to_input,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {**meta, **metadata}, **extra, **model.saelens_config(),
    }


def _hook_name(site: str) -> str | None:
    if not site:
        return None
    from mechscope.interp.sites import Site

    return Site.parse(site).hook_name


def load_dictionary(path: str | Path) -> Any:
    """A mechscope dictionary from a mechscope, SAELens or sparsify folder (see module doc), or a
    SAELens pretrained SAE written ``sae_lens:RELEASE/SAE_ID`` (through SAELens' own loader, which
    needs the hub or its cache; returned as a `mechscope.sae.adapters.SAELensDictionary`)."""
    from mechscope.sae.adapters import SAELENS_PREFIX, load_pretrained

    if str(path).startswith(SAELENS_PREFIX):
        return load_pretrained(str(path))
    path = Path(path)
    if not path.is_dir():
        raise DictionaryFileError(f"{path} is not a folder")
    if (path / META).exists():
        return _load_mechscope(path)
    if (path / SL_CFG).exists() and (path / SL_WEIGHTS).exists():
        return _load_saelens(path)
    if (path / SL_CFG).exists() and (path / SPARSIFY_WEIGHTS).exists():
        return _load_sparsify(path)
    raise DictionaryFileError(
        f"{path} holds no dictionary: expected {META} (mechscope), {SL_CFG} + {SL_WEIGHTS} "
        f"(SAELens) or {SL_CFG} + {SPARSIFY_WEIGHTS} (sparsify); found {sorted(p.name for p in path.iterdir())}")


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DictionaryFileError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DictionaryFileError(f"{p} must hold a JSON object")
    return data


def _read_tensors(p: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, Exception) as e:  # noqa: BLE001 - any read failure is "corrupt"
        raise DictionaryFileError(f"{p} is not a readable safetensors file ({type(e).__name__}: {e})") from None


def _require(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], where: Path) -> None:
    check_state_dict(tensors, shapes, where, allow_unexpected=True, error=DictionaryFileError)


@torch.no_grad()
def _fill(model: SparseDictionary, t: dict[str, torch.Tensor], where: Path, provenance: Provenance) -> SparseDictionary:
    _require(t, model.weight_shapes(), where)
    model.load_folded(t)
    model.provenance = provenance
    return model.eval()


def _load_mechscope(path: Path) -> SparseDictionary:
    meta = _read_json(path / META)
    try:
        if meta.get("format") == 1:
            run = _from_flat_v1(meta["config"])
            cfg, train = run.dictionary, run.train
        elif meta.get("format") == FORMAT:
            cfg = dictionary_config(meta["dictionary"])
            train = TrainConfig(**meta["train"]) if meta.get("train") is not None else None
        else:
            raise DictionaryFileError(f"{path / META}: format {meta.get('format')!r} is not {FORMAT} (or 1)")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, DictionaryFileError):
            raise
        raise DictionaryFileError(f"{path / META}: bad config ({e})") from None
    model = build_dictionary(cfg, train)
    model.b_dec_to_input = bool(meta.get("b_dec_to_input", True))
    model = _fill(model, _read_tensors(path / SL_WEIGHTS), path / SL_WEIGHTS,
                  Provenance("mechscope", str(path), meta.get("metadata") or {}))
    if not meta.get("unit_norm_decoder"):  # unit rows are the point of that export: codes stay raw
        model.unfold_scales(*map(float, meta.get("folded_scales") or (1.0, 1.0)))
    return model


def _from_flat_v1(flat: dict[str, Any]) -> RunConfig:
    """Format 1 stored every architecture's fields in one flat config: keep this one's."""
    arch = flat.get("architecture", "topk")
    if arch not in CONFIGS:
        raise ValueError(f"architecture {arch!r} is not one of {', '.join(CONFIGS)}")
    others = {f.name for c in CONFIGS.values() for f in dataclasses.fields(c)}
    return RunConfig.from_dict(flat, sweep_fields=frozenset(others))


def _saelens_classes() -> dict[str, type[SparseDictionary]]:
    """SAELens architecture name -> the class that reads it (`SparseDictionary.saelens_reads`)."""
    classes = dictionary_classes().values()
    transcoders = {c.saelens_transcoder: c for c in classes
                   if c.saelens_transcoder and c.saelens_architecture in c.saelens_reads}
    return {name: c for c in classes for name in c.saelens_reads} | transcoders


def _load_saelens(path: Path) -> SparseDictionary:
    c = _read_json(path / SL_CFG)
    arch = c.get("architecture", "standard")
    classes = _saelens_classes()
    if arch not in classes:
        raise DictionaryFileError(f"{path / SL_CFG}: SAELens architecture {arch!r} is not supported; "
                                  f"supported: {', '.join(classes)}")
    if c.get("normalize_activations", "none") not in ("none", None):
        raise DictionaryFileError(f"{path / SL_CFG}: normalize_activations={c['normalize_activations']!r}"
                                  " is not supported; fold it into the weights first (SAELens: "
                                  "fold_activation_norm_scaling_factor)")
    try:
        d_in, d_sae, k = int(c["d_in"]), int(c["d_sae"]), int(c.get("k", 1))
    except (KeyError, TypeError, ValueError) as e:
        raise DictionaryFileError(f"{path / SL_CFG}: needs integer d_in and d_sae ({e})") from None
    cls = classes[arch]
    transcoder = arch == cls.saelens_transcoder
    d_out = int(c.get("d_out", d_in)) if transcoder else d_in
    t = cls.from_saelens_tensors(_read_tensors(path / SL_WEIGHTS))
    _require(t, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)},
             path / SL_WEIGHTS)
    meta = c.get("metadata") or {}
    site_in = _site_of(meta.get("hook_name") or c.get("hook_name"))
    sites = {"transcoder": True, "d_out": d_out, "site_out": _site_of(meta.get("hook_name_out"))} if transcoder else {}
    cfg = cls.config_class(d_in=d_in, d_dict=d_sae, k=min(k, d_sae), site_in=site_in, **sites)
    model = cls(cfg, None)
    model.b_dec_to_input = bool(c.get("apply_b_dec_to_input", True))
    if c.get("rescale_acts_by_decoder_norm"):
        # SAELens multiplies pre-activations by ||W_dec_i|| and divides before decoding
        norm = t["W_dec"].norm(dim=-1).clamp_min(1e-8)
        t = {**t, "W_enc": t["W_enc"] * norm, "b_enc": t["b_enc"] * norm, "W_dec": t["W_dec"] / norm[:, None]}
    return _fill(model, t, path / SL_WEIGHTS, Provenance("sae_lens", str(path), meta))

def _site_of(hook_name: str | None) -> str:
    """'L3.resid_post' for 'blocks.3.hook_resid_post' when it is a plain block site, else ''."""
    if not hook_name:
        return ""
    parts = hook_name.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2].startswith("hook_"):
        site = f"L{parts[1]}.{parts[2][5:]}"
        try:
            from mechscope.interp.sites import Site

            Site.parse(site)
            return site
        except ValueError:
            return ""
    return ""


def _load_sparsify(path: Path) -> SparseDictionary:
    c = _read_json(path / SL_CFG)
    t = _read_tensors(path / SPARSIFY_WEIGHTS)
    if "W_skip" in t:
        raise DictionaryFileError(f"{path}: sparsify skip transcoders (W_skip) are not supported")
    if "encoder.weight" not in t or "W_dec" not in t:
        raise DictionaryFileError(f"{path / SPARSIFY_WEIGHTS}: expected sparsify keys encoder.weight, "
                                  f"encoder.bias, W_dec, b_dec; has {sorted(t)}")
    m, d_in = t["encoder.weight"].shape
    d_out = t["W_dec"].shape[1]
    if "d_in" in c and int(c["d_in"]) != d_in:
        raise DictionaryFileError(f"{path}: cfg d_in={c['d_in']} but encoder.weight is {tuple(t['encoder.weight'].shape)}")
    if c.get("num_latents") and int(c["num_latents"]) != m:
        raise DictionaryFileError(f"{path}: cfg num_latents={c['num_latents']} but encoder has {m} rows")
    if "k" not in c:
        raise DictionaryFileError(f"{path / SL_CFG}: sparsify config needs k")
    if c.get("activation", "topk") != "topk":
        # groupmax keeps the largest pre-activation of each of k contiguous groups: not a top-k
        raise DictionaryFileError(f"{path / SL_CFG}: sparsify activation {c['activation']!r} is not "
                                  "supported; supported: topk")
    _require(t, {"encoder.bias": (m,), "W_dec": (m, d_out), "b_dec": (d_out,)}, path / SPARSIFY_WEIGHTS)
    transcode = bool(c.get("transcode", False)) or d_out != d_in
    cls = dictionary_classes()["topk"]
    cfg = cls.config_class(d_in=d_in, d_dict=m, d_out=d_out if transcode else 0, transcoder=transcode,
                           k=int(c["k"]))
    ours = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    return _fill(cls(cfg, None), ours, path / SPARSIFY_WEIGHTS, Provenance("sparsify", str(path), c))


def load_sae_lens(path: str | Path) -> Any:
    """``sae_lens.SAE.load_from_disk(path)`` (imports sae_lens)."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(path))

