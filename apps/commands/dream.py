"""``mechscope dream``: fluent prompts that drive a feature, neuron, direction, head or logit (EPO).

Parses the target from flags, runs `mechscope.circuits.dream.dream`, optionally reads the same
target and cross-entropy on real text (``--reference``), and writes ``dream.json`` and the offline
frontier page ``dream.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mechscope.apps.cli import command
from mechscope.apps.commands.common import beside, device_options, load_model_from


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--feature", metavar="SAE_DIR:IDX", help="feature IDX of a dictionary folder")
    what.add_argument("--neuron", metavar="SITE:IDX", help="unit IDX of a site, e.g. L2.mlp_post:17")
    what.add_argument("--direction", metavar="SITE:FILE", help="x·v at SITE, v from a .json list or .safetensors file")
    what.add_argument("--head", metavar="L.H:FILE", help="head H of layer L's output along v from FILE, e.g. 1.3:v.json")
    what.add_argument("--logit", metavar="TOKEN[,OTHER]", help="logit of TOKEN (minus OTHER); a one-token string or #id")
    p.add_argument("--site", default=None, help="site of the --feature dictionary (default: from its metadata)")
    p.add_argument("--position", default=None, help="prompt position to optimise, or 'max' (default: max; last for --logit)")
    p.add_argument("--length", default="8", help="prompt length N, or a range LO-HI")
    p.add_argument("--steps", type=int, default=100, help="EPO iterations")
    p.add_argument("--population", type=int, default=8, help="members, each with its own fluency weight")
    p.add_argument("--children", type=int, default=16, help="children per member per step")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass (bounds memory)")
    p.add_argument("--topk", type=int, default=64, help="gradient candidates per position")
    p.add_argument("--lambda-min", type=float, default=0.1, help="smallest fluency weight")
    p.add_argument("--lambda-max", type=float, default=10.0, help="largest fluency weight")
    p.add_argument("--restart-every", type=int, default=50, help="restart from one member every N steps (0: never)")
    p.add_argument("--explore", type=float, default=0.1, help="share of uniformly random substitutions")
    p.add_argument("--seed", type=int, default=0, help="seed of the run")
    p.add_argument("--no-surrogate", action="store_true",
                   help="--feature: search on the activation only, without the firing-margin surrogate "
                        "for a top-k / JumpReLU feature that is off (it then has zero gradient)")
    p.add_argument("--reference", default=None, help="text spec to compare with (e.g. zoo:heldout): max and CE on windows of the prompt length")
    p.add_argument("--reference-windows", type=int, default=4096, help="windows of --reference to read at most")
    device_options(p)
    p.add_argument("--out", required=True, help="output folder (dream.json, dream.html)")


def _split(text: str, flag: str) -> tuple[str, str]:
    head, sep, tail = text.rpartition(":")
    if not sep or not head or not tail:
        raise ValueError(f"{flag} expects PART:VALUE (e.g. {'L2.mlp_post:17' if flag == '--neuron' else 'DIR:12'}), got {text!r}")
    return head, tail


def _index(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{flag}: index must be an integer, got {text!r}") from None


def _vector(path: str) -> Any:
    import json

    import torch

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"direction file {path} does not exist")
    if p.suffix == ".json":
        return torch.tensor(json.loads(p.read_text()), dtype=torch.float32)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(p)
        if len(tensors) != 1:
            raise ValueError(f"{path} holds {len(tensors)} tensors ({', '.join(tensors)}); expected one vector")
        return next(iter(tensors.values())).float()
    raise ValueError(f"direction file {path}: expected a .json list of numbers or a .safetensors file")


def _token(model: Any, text: str) -> int:
    if text.startswith("#"):
        return _index(text[1:], "--logit")
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        raise ValueError(f"--logit {text!r} is {len(ids)} tokens {model.to_str_tokens(ids)}; give one token or #id")
    return ids[0]


def parse_target(args: argparse.Namespace, model: Any) -> Any:
    """The `Target` of the flags (validated against ``model`` by the run)."""
    from mechscope.circuits.dream_targets import Target

    pos = None if args.position in (None, "max") else _index(args.position, "--position")
    if args.feature:
        from mechscope.sae.io import load_dictionary

        folder, idx = _split(args.feature, "--feature")
        dictionary = beside(load_dictionary(folder), model)
        site = args.site or getattr(getattr(dictionary, "cfg", None), "site_in", "")
        if not site:
            raise ValueError("the dictionary records no site; pass --site (e.g. L2.resid_pre)")
        return Target.feature(site, dictionary, _index(idx, "--feature"), pos)
    if args.neuron:
        site, idx = _split(args.neuron, "--neuron")
        return Target.neuron(site, _index(idx, "--neuron"), pos)
    if args.direction:
        site, path = _split(args.direction, "--direction")
        return Target.direction(site, _vector(path), pos, name=Path(path).stem)
    if args.head:
        lh, path = _split(args.head, "--head")
        layer, _, head = lh.partition(".")
        return Target.head(_index(layer, "--head"), _index(head, "--head"), _vector(path), pos, name=Path(path).stem)
    tok, _, other = args.logit.partition(",")
    return Target.logit(_token(model, tok), _token(model, other) if other else None,
                        -1 if args.position is None else pos)


def _length(text: str) -> int | tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        return (int(lo), int(hi)) if sep else int(lo)
    except ValueError:
        raise ValueError(f"--length must be N or LO-HI, got {text!r}") from None


@command("dream", "Fluent dreaming (EPO): prompts that maximise a feature, neuron, direction, head or logit.", _options)
def dream_cmd(args: argparse.Namespace) -> int:
    import itertools

    from mechscope.apps.dream_view import write_dream_html
    from mechscope.circuits.dream import DreamConfig, dream, text_reference
    cfg = DreamConfig(length=_length(args.length), steps=args.steps, population=args.population,
                      children=args.children, batch_size=args.batch_size, topk=args.topk,
                      lambda_min=args.lambda_min, lambda_max=args.lambda_max,
                      restart_every=args.restart_every, explore=args.explore, seed=args.seed,
                      surrogate=not args.no_surrogate)
    model = load_model_from(args)
    target = parse_target(args, model)
    result = dream(model, target, cfg)
    out = Path(args.out)
    reference = None
    surrogate = " (firing-margin surrogate)" if result.config["surrogate_used"] else ""
    print(f"dreamed {result.target} on {model.name}{surrogate}: {result.evaluated} prompts in {result.seconds:.1f} s")
    if args.reference:
        from mechscope.interp.tokens import open_token_stream

        n = cfg.length_range[1] + (model.bos_id is not None)
        windows = itertools.islice(open_token_stream(args.reference, n, model, epochs=1), args.reference_windows)
        ref = text_reference(model, target, windows, cfg.batch_size)
        reference = {f"{args.reference} max": ref.max_activation, f"{args.reference} cross-entropy": ref.cross_entropy}
        fluent = [m for m in result.frontier if m.cross_entropy <= ref.cross_entropy]
        print(f"  {args.reference}: max {ref.max_activation:.4g} over {ref.n_windows} windows of {n} tokens, "
              f"cross-entropy {ref.cross_entropy:.3f}")
        print(f"  dreamed at cross-entropy <= {ref.cross_entropy:.3f}: "
              + (f"{max(m.activation for m in fluent):.4g}" if fluent else "none that fluent"))
    for m in result.members:
        print(f"  λ={m.lam:<7.3g} act {m.activation:<9.4g} CE {m.cross_entropy:<6.3f} {m.text!r}")
    path = result.save(out / "dream.json")
    page = write_dream_html(result, out / "dream.html", reference)
    print(f"  {path}\n  {page}")
    return 0

