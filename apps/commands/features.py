"""``mechscope features``: feature cards of a dictionary and the offline feature browser.

``--dream N`` also dreams features (fluent dreaming, EPO: `mechscope.circuits.dream`) and shows,
on each dreamed feature's page, the activation / cross-entropy frontier with the dataset's max
activation marked and the best fluent prompts beside the dataset's top contexts. Which features:
``--dream-features i,j,k`` when given (any, rare or dead ones included), else the N live features
that fire most often. Time is bounded per feature by the budget flags: STEPS x POPULATION x
CHILDREN prompts of LENGTH tokens (default 40 x 8 x 16 = 5120 prompts of 8 tokens, plus one
gradient pass of the population per step). Results are also saved as ``dreams.json``.
"""

from __future__ import annotations

import argparse

from mechscope.apps.cli import command
from mechscope.apps.commands.common import device_options


def _features_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae_dir", help="a dictionary folder (mechscope, SAELens or sparsify format)")
    p.add_argument("--out", required=True, help="output folder of the offline browser (index.html)")
    p.add_argument("--graphs", default=None, metavar="GLOB|DIR",
                   help="graph JSON files (a folder or a glob): feature pages link to the graphs holding them")
    p.add_argument("--model", default="gpt2-shakespeare", help="model the dictionary was trained on")
    device_options(p)
    p.add_argument("--site", default=None, help="site of the dictionary (default: from its metadata)")
    p.add_argument("--text", default="zoo:heldout", help="text spec to compute feature statistics on")
    p.add_argument("--tokens", type=int, default=65536, help="tokens to compute statistics over")
    p.add_argument("--n-ctx", type=int, default=128, help="tokens per context window")
    _dream_options(p)


def _dream_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dreaming (EPO) on feature pages; per-feature budget = steps x population x children prompts")
    g.add_argument("--dream", type=int, default=0, metavar="N",
                   help="dream the N live features that fire most often (0: none)")
    g.add_argument("--dream-features", default=None, metavar="I,J,K",
                   help="dream these features instead (rare or dead ones included)")
    g.add_argument("--dream-steps", type=int, default=40, help="EPO steps per feature")
    g.add_argument("--dream-population", type=int, default=8, help="members (fluency weights) per feature")
    g.add_argument("--dream-children", type=int, default=16, help="children per member per step")
    g.add_argument("--dream-length", default="8", help="prompt length N, or a range LO-HI")
    g.add_argument("--dream-batch-size", type=int, default=64, help="prompts per forward pass (bounds memory)")
    g.add_argument("--dream-seed", type=int, default=0, help="seed of every dream")
    g.add_argument("--no-dream-surrogate", action="store_true",
                   help="search on the activation only (no firing-margin surrogate for features that are off)")


def _dream_config(args: argparse.Namespace):
    from mechscope.apps.commands.dream import _length
    from mechscope.circuits.dream import DreamConfig

    return DreamConfig(length=_length(args.dream_length), steps=args.dream_steps,
                       population=args.dream_population, children=args.dream_children,
                       batch_size=args.dream_batch_size, seed=args.dream_seed,
                       surrogate=not args.no_dream_surrogate)


def _dream_indices(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--dream-features expects comma-separated feature indices (e.g. 3,17,250), got {text!r}") from None


@command("features", "Compute feature cards for a dictionary and write the offline feature browser.", _features_options)
def features_cmd(args: argparse.Namespace) -> int:
    import itertools

    from mechscope.apps.browser import build_feature_browser
    from mechscope.apps.commands.common import beside, check_sizes, load_model_from
    from mechscope.apps.dream_view import check_dream_features
    from mechscope.interp.tokens import open_token_stream
    from mechscope.lock import folder_lock
    from mechscope.sae.io import load_dictionary

    check_sizes(args)
    # bad dreaming flags fail before any work
    dream_cfg = _dream_config(args) if (args.dream or args.dream_features) else None
    explicit = _dream_indices(args.dream_features)
    dictionary = load_dictionary(args.sae_dir)
    _check_finite(dictionary, args.sae_dir)
    if explicit is not None:
        explicit = check_dream_features(explicit, dictionary.d_dict)
    site = args.site or getattr(getattr(dictionary, "cfg", None), "site_in", "")
    if not site:
        raise ValueError("the dictionary records no site; pass --site (e.g. L2.resid_pre)")
    with folder_lock(args.out, "--out", "mechscope features"):  # checked writable before the statistics
        model = load_model_from(args)
        dictionary = beside(dictionary, model)
        check_sizes(args, model)
        windows = itertools.islice(open_token_stream(args.text, args.n_ctx, model, epochs=1),
                                   args.tokens // args.n_ctx + 1)
        name = f"{args.sae_dir} ({site})"
        if dream_cfg is not None:
            index = _browser_with_dreams(args, model, dictionary, site, windows, name, dream_cfg, explicit)
        else:
            index = build_feature_browser(model, dictionary, site, windows, args.tokens, args.out,
                                          dictionary_name=name)
    print(f"feature browser: {index}")
    if args.graphs:
        _link_graphs(args.out, args.graphs)
    return 0


def _browser_with_dreams(args: argparse.Namespace, model, dictionary, site: str, windows, name: str,
                         config, explicit: list[int] | None):
    """Cards, then EPO on the chosen features, then the browser with the dreams on their pages."""
    from pathlib import Path

    from mechscope.apps.browser import write_feature_browser
    from mechscope.apps.dream_view import pick_dream_features
    from mechscope.circuits.dream import dream_features
    from mechscope.files import write_json
    from mechscope.sae.cards import save_cards
    from mechscope.sae.features import compute_feature_cards

    cards = compute_feature_cards(model, dictionary, site, windows, args.tokens, dictionary_name=name)
    save_cards(cards, Path(args.out) / "cards.json")
    chosen = pick_dream_features(cards, args.dream, explicit)
    dreams = dream_features(model, dictionary, site, chosen, config)
    write_json(Path(args.out) / "dreams.json", {"format": "mechscope.feature_dreams", "version": 1,
                                                "dreams": {str(i): r.to_json() for i, r in dreams.items()}})
    for i, r in dreams.items():
        best, card = r.best(), cards[i]
        data = f"dataset max {card.max_activation:.4g}" if not card.dead else "never fired on the text"
        print(f"  feature {i}: dreamed {best.activation:.4g} at CE {best.cross_entropy:.2f} ({data}) "
              f"in {r.seconds:.1f} s: {best.text!r}")
    return write_feature_browser(cards, args.out, dreams=dreams)


def _check_finite(dictionary, where: str) -> None:
    """A diverged dictionary (NaN / inf weights) would give a browser of NaN: refuse it by name."""
    import torch

    state = dictionary.state_dict() if hasattr(dictionary, "state_dict") else {}
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"dictionary {where} has non-finite values (NaN or inf) in {', '.join(bad)}: "
                         "its training diverged; retrain it (e.g. with a lower sae.lr)")


def _link_graphs(out: str, spec: str) -> None:
    """``--graphs``: index the graphs holding this browser's features (`apps.graph_index`)."""
    from mechscope.apps.graph_index import index_graphs

    linked, skipped = index_graphs(out, spec)
    print(f"graphs containing these features: {len(linked)}" + "".join(f"\n  {p}" for p in linked))
    if skipped:
        print(f"skipped {len(skipped)} JSON files that are not mechscope graphs: " + ", ".join(map(str, skipped[:5]))
              + (" ..." if len(skipped) > 5 else ""))
