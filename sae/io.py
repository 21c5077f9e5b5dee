"""Dictionary folders: save SAELens-compatible folders, load mechscope, SAELens and sparsify ones.

A saved folder holds
- ``sae_weights.safetensors``: weights in raw activation units (the normalisation scales folded
  in, see below) with SAELens 6.x key names and layout: ``W_enc [d_in, d_sae]`` (the transpose of
  ours), ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, and ``threshold [d_sae]``
  for JumpReLU;
- ``cfg.json``: SAELens's config (``architecture`` topk / standard / jumprelu, ``d_in``,
  ``d_sae``, ``k``, ``apply_b_dec_to_input``, ``normalize_activations: "none"``, ``metadata``),
  so ``sae_lens.SAE.load_from_disk(folder)`` gives the same encode/decode as mechscope; written
  only for architectures SAELens shares (batch-top-k is saved, as SAELens does, as a JumpReLU
  with one global threshold). MP-SAEs, codebooks and transcoders get no cfg.json;
- ``mechscope.json``: our own metadata (format, architecture, full `TrainConfig`, scales).

Folding the normalisation ``x̃ = s·x`` (s_in = s_out = s for an SAE): since the dictionary sees
``(s x − b) W_encᵀ + b_enc`` and outputs ``(f W_dec + b)/s``, saving ``W_enc·s``, ``W_dec/s``,
``b_dec/s`` gives the same function on raw activations with no scale.

`load_dictionary` reads any of: a mechscope folder, a SAELens folder (``cfg.json`` +
``sae_weights.safetensors``; topk, standard, jumprelu, batchtopk), or a sparsify (EleutherAI)
folder (``cfg.json`` + ``sae.safetensors`` with ``encoder.weight [m, d_in]``, ``encoder.bias``,
``W_dec [m, d_out]``, ``b_dec``; top-k on ``relu(encoder(x − b_dec))``, no centring when
``transcode``). This is the only module that imports sae_lens, and only in `load_sae_lens`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechscope.sae.base import SparseDictionary
from mechscope.sae.config import TrainConfig
from mechscope.sae.factory import build_dictionary

FORMAT = 1
META, SL_CFG, SL_WEIGHTS, SPARSIFY_WEIGHTS = "mechscope.json", "cfg.json", "sae_weights.safetensors", "sae.safetensors"
_SAELENS_ARCH = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


class DictionaryFileError(ValueError):
    """A dictionary folder that is missing, corrupt or inconsistent."""


@torch.no_grad()
def folded_weights(model: SparseDictionary) -> dict[str, torch.Tensor]:
    """The model's weights in raw units, SAELens key names and layout."""
    s_in, s_out = float(model.scale_in), float(model.scale_out)
    if model.architecture == "mp":
        # the pursuit's coefficients depend on the scale, so MP-SAEs keep theirs unfolded
        return {"W_dec": model.W_dec.detach().clone(), "b_dec": model.b_dec.detach().clone(),
                "scale_in": model.scale_in.clone(), "scale_out": model.scale_out.clone()}
    out = {"W_dec": model.W_dec / s_out, "b_dec": model.b_dec / s_out}
    if hasattr(model, "W_enc"):
        out["W_enc"] = (model.W_enc * s_in).T
        out["b_enc"] = model.b_enc.clone()
    if model.architecture == "jumprelu":
        out["threshold"] = model.threshold.detach().clone()
    if model.architecture == "batchtopk":
        out["threshold"] = model.threshold.clamp_min(0).expand(model.d_dict).clone()
    return {k: v.detach().contiguous().float() for k, v in out.items()}


def save_dictionary(model: SparseDictionary, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``path/{sae_weights.safetensors, mechscope.json[, cfg.json]}``; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    save_file(folded_weights(model), str(path / SL_WEIGHTS))
    meta = {"format": FORMAT, "architecture": model.architecture, "config": cfg.to_dict(),
            "b_dec_to_input": model.b_dec_to_input, "folded_scales": [float(model.scale_in), float(model.scale_out)],
            "metadata": metadata or {}}
    (path / META).write_text(json.dumps(meta, indent=2))
    if model.architecture in _SAELENS_ARCH and model.d_in == model.d_out:
        (path / SL_CFG).write_text(json.dumps(_saelens_cfg(model, metadata or {}), indent=2))
    return path


def _saelens_cfg(model: SparseDictionary, metadata: dict[str, Any]) -> dict[str, Any]:
    cfg = model.cfg
    out: dict[str, Any] = {
        "architecture": _SAELENS_ARCH[model.architecture], "d_in": model.d_in, "d_sae": model.d_dict,
        "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": model.b_dec_to_input,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.0", "sae_lens_training_version": None,
                     "hook_name": _hook_name(cfg.site_in), **metadata},
    }
    if model.architecture == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    return out


def _hook_name(site: str) -> str | None:
    if not site:
        return None
    from mechscope.interp.sites import Site

    return Site.parse(site).hook_name


def load_dictionary(path: str | Path) -> SparseDictionary:
    """A mechscope dictionary from a mechscope, SAELens or sparsify folder (see module doc)."""
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
    for key, shape in shapes.items():
        if key not in tensors:
            raise DictionaryFileError(f"{where}: missing tensor {key!r} (has {sorted(tensors)})")
        if tuple(tensors[key].shape) != shape:
            raise DictionaryFileError(f"{where}: tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                                      f"expected {shape} from the config")


@torch.no_grad()
def _fill(model: SparseDictionary, W_enc: torch.Tensor | None, b_enc: torch.Tensor | None,
          W_dec: torch.Tensor, b_dec: torch.Tensor, threshold: torch.Tensor | None,
          scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> SparseDictionary:
    """Set raw-unit weights (ours: W_enc [m, d_in]) with unit scales."""
    model.scale_in.fill_(1.0)
    model.scale_out.fill_(1.0)
    model.W_dec.copy_(W_dec)
    model.b_dec.copy_(b_dec)
    if W_enc is not None:
        model.W_enc.copy_(W_enc)
        model.b_enc.copy_(b_enc)
    if threshold is not None and model.architecture == "jumprelu":
        model.log_threshold.copy_(threshold.clamp_min(1e-30).log())
    if threshold is not None and model.architecture == "batchtopk":
        model.threshold.fill_(float(threshold.max()))
    if scales is not None:
        model.scale_in.copy_(scales[0])
        model.scale_out.copy_(scales[1])
    return model.eval()


def _load_mechscope(path: Path) -> SparseDictionary:
    meta = _read_json(path / META)
    if meta.get("format") != FORMAT:
        raise DictionaryFileError(f"{path / META}: format {meta.get('format')!r} is not {FORMAT}")
    try:
        cfg = TrainConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise DictionaryFileError(f"{path / META}: bad config ({e})") from None
    model = build_dictionary(cfg)
    model.b_dec_to_input = bool(meta.get("b_dec_to_input", True))
    t = _read_tensors(path / SL_WEIGHTS)
    m, di, do = cfg.d_dict, cfg.d_in, cfg.d_output
    shapes = {"W_dec": (m, do), "b_dec": (do,)}
    if hasattr(model, "W_enc"):
        shapes.update(W_enc=(di, m), b_enc=(m,))
    if cfg.architecture in ("jumprelu", "batchtopk"):
        shapes["threshold"] = (m,)
    if cfg.architecture == "mp":
        shapes.update(scale_in=(), scale_out=())
    _require(t, shapes, path / SL_WEIGHTS)
    W_enc = t["W_enc"].T if "W_enc" in shapes else None
    scales = (t["scale_in"], t["scale_out"]) if cfg.architecture == "mp" else None
    return _fill(model, W_enc, t.get("b_enc"), t["W_dec"], t["b_dec"], t.get("threshold"), scales)


def _load_saelens(path: Path) -> SparseDictionary:
    c = _read_json(path / SL_CFG)
    arch = c.get("architecture", "standard")
    ours = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}
    if arch not in ours:
        raise DictionaryFileError(f"{path / SL_CFG}: SAELens architecture {arch!r} is not supported; "
                                  f"supported: {', '.join(ours)}")
    if c.get("normalize_activations", "none") not in ("none", None):
        raise DictionaryFileError(f"{path / SL_CFG}: normalize_activations={c['normalize_activations']!r}"
                                  " is not supported; fold it into the weights first (SAELens: "
                                  "fold_activation_norm_scaling_factor)")
    try:
        d_in, d_sae, k = int(c["d_in"]), int(c["d_sae"]), int(c.get("k", 1))
    except (KeyError, TypeError, ValueError) as e:
        raise DictionaryFileError(f"{path / SL_CFG}: needs integer d_in and d_sae ({e})") from None
    t = _read_tensors(path / SL_WEIGHTS)
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        if "log_threshold" in t:  # older SAELens checkpoints
            t["threshold"] = t.pop("log_threshold").exp()
        shapes["threshold"] = (d_sae,)
    _require(t, shapes, path / SL_WEIGHTS)
    cfg = TrainConfig(architecture=ours[arch], d_in=d_in, d_dict=d_sae, k=min(k, d_sae), normalize=False,
                      site_in=_site_of(c.get("metadata", {}).get("hook_name") or c.get("hook_name")))
    model = build_dictionary(cfg)
    model.b_dec_to_input = bool(c.get("apply_b_dec_to_input", True))
    W_enc, b_enc, W_dec = t["W_enc"].T, t["b_enc"], t["W_dec"]
    if c.get("rescale_acts_by_decoder_norm"):
        # SAELens multiplies pre-activations by ||W_dec_i|| and divides before decoding
        norm = W_dec.norm(dim=-1).clamp_min(1e-8)
        W_enc, b_enc, W_dec = W_enc * norm[:, None], b_enc * norm, W_dec / norm[:, None]
    return _fill(model, W_enc, b_enc, W_dec, t["b_dec"], t.get("threshold"))


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
    _require(t, {"encoder.bias": (m,), "W_dec": (m, d_out), "b_dec": (d_out,)}, path / SPARSIFY_WEIGHTS)
    transcode = bool(c.get("transcode", False)) or d_out != d_in
    cfg = TrainConfig(architecture="topk", d_in=d_in, d_dict=m, d_out=d_out if transcode else 0,
                      transcoder=transcode, k=int(c["k"]), normalize=False)
    model = build_dictionary(cfg)
    return _fill(model, t["encoder.weight"], t["encoder.bias"], t["W_dec"], t["b_dec"], None)


def load_sae_lens(path: str | Path) -> Any:
    """``sae_lens.SAE.load_from_disk(path)`` (imports sae_lens)."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(path))

