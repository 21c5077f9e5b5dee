"""The offline model zoo: small models mechscope trains itself and ships inside the package.

* ``gpt2-shakespeare`` (default): GPT-2 architecture LM on Shakespeare, own byte-level BPE.
* ``llama-shakespeare``: Llama architecture (RMSNorm, rotary, gated SiLU MLP, GQA), same data.
* ``attn-only-induction``: 2-layer attention-only model with a known induction circuit
  (previous-token head in layer 0, induction head in layer 1; Olsson et al. 2022).

Each lives in ``models/<name>/`` (safetensors + config + tokenizer + ``card.json``); the corpus
is in ``data/``. Importing this package imports neither torch nor TransformerLens.
"""

from __future__ import annotations

import json
from pathlib import Path

from .corpus import corpus_path, corpus_text
from .specs import DEFAULT, SPECS

__all__ = ["DEFAULT", "names", "load", "card", "model_dir", "corpus_path", "corpus_text", "build"]

MODELS_DIR = Path(__file__).parent / "models"


def names() -> list[str]:
    """Names of the zoo models, default first."""
    return [DEFAULT] + sorted(n for n in SPECS if n != DEFAULT)


def _check(name: str) -> str:
    if name not in SPECS:
        raise ValueError(f"unknown zoo model {name!r}; zoo names are {names()}")
    return name


def model_dir(name: str) -> Path:
    """Folder of a shipped zoo model."""
    return MODELS_DIR / _check(name)


def card(name: str) -> dict:
    """The model card of a shipped zoo model."""
    path = model_dir(name) / "card.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; build it with `mechscope zoo build {name}`")
    return json.loads(path.read_text())


def load(name: str, device: str = "cpu"):
    """``(HookedTransformer in eval mode with its tokenizer, card)`` for a zoo model."""
    from .store import load_folder

    return load_folder(model_dir(name), device=device)


def build(name: str, out_dir: Path | None = None, seed: int = 0, steps: int | None = None,
          quick: bool = False) -> Path:
    """Run the deterministic build recipe of ``name``; see ``mechscope.interp.zoo.recipe``."""
    from .recipe import build as _build

    _check(name)
    return _build(name, out_dir=out_dir, seed=seed, steps=steps, quick=quick)
