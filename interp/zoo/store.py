"""On-disk format of a zoo model folder, and loading it back as a ``HookedTransformer``.

A folder ``models/<name>/`` holds, with no nesting:

* ``model.safetensors`` - the parameters (``named_parameters`` of the HookedTransformer; buffers
  such as causal masks and rotary tables are rebuilt from the config), fp16 or fp32;
* ``config.json``       - the ``HookedTransformerConfig`` keyword arguments that rebuild it;
* ``tokenizer.json``, ``tokenizer_config.json`` - the tokenizer, loaded with
  ``AutoTokenizer.from_pretrained(folder)`` (TransformerLens reloads it by path, hence a folder);
* ``card.json``         - the model card (data, recipe, losses, bounds, scores, provenance).
"""

from __future__ import annotations

import json
from pathlib import Path

from mechscope import files

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "card.json"


def write_json(path: Path, obj: dict) -> None:
    """Atomic write (temp file + rename), so a crashed build never leaves half a card."""
    files.write_json(path, obj, indent=2)


def save_weights(model, folder: Path, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file

    torch_dtype = {"float16": torch.float16, "float32": torch.float32}[dtype]
    tensors = {n: p.detach().to("cpu", torch_dtype).contiguous() for n, p in model.named_parameters()}
    with files.atomic_path(Path(folder) / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "dtype": dtype})


def build_model(cfg: dict, tokenizer=None, device: str = "cpu"):
    """A freshly initialised HookedTransformer from config fields (seeded by ``cfg['seed']``)."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = HookedTransformerConfig(**{**cfg, "device": device})
    with warnings.catch_warnings():
        # TL warns that a config-built model has no pretrained name; expected here
        warnings.simplefilter("ignore")
        return HookedTransformer(config, tokenizer=tokenizer, move_to_device=True)


def load_folder(folder: Path, device: str = "cpu"):
    """``(model, card)`` from a zoo folder: model in eval mode, fp32, tokenizer attached."""
    import torch
    from safetensors.torch import load_file

    from mechscope.tensors import check_state_dict

    from .tokenizer import load_folder as load_tokenizer

    folder = Path(folder)
    for required in (WEIGHTS, CONFIG, CARD, "tokenizer.json"):
        if not (folder / required).exists():
            raise FileNotFoundError(f"zoo folder {folder} lacks {required}; rebuild the model")
    cfg = json.loads((folder / CONFIG).read_text())
    # a config seed makes TL reseed torch/numpy/random globally; loading must not touch user RNGs
    seed = cfg.pop("seed", None)
    with torch.random.fork_rng(devices=[]):
        # the stored weights replace any initialisation, so skip it
        model = build_model({**cfg, "init_weights": False}, tokenizer=load_tokenizer(folder),
                            device=device)
    model.cfg.seed = seed
    state = {k: v.to(torch.float32) for k, v in load_file(str(folder / WEIGHTS)).items()}
    # the file holds parameters only (TransformerLens buffers are rebuilt from the config)
    check_state_dict(state, dict(model.named_parameters()), folder / WEIGHTS)
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, json.loads((folder / CARD).read_text())
