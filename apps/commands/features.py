"""``mechscope features``: feature cards of a dictionary and the offline feature browser."""

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


@command("features", "Compute feature cards for a dictionary and write the offline feature browser.", _features_options)
def features_cmd(args: argparse.Namespace) -> int:
    import itertools

    from mechscope.apps.browser import build_feature_browser
    from mechscope.apps.commands.common import beside, check_sizes, load_model_from
    from mechscope.interp.tokens import open_token_stream
    from mechscope.lock import folder_lock
    from mechscope.sae.io import load_dictionary

    check_sizes(args)
    dictionary = load_dictionary(args.sae_dir)
    _check_finite(dictionary, args.sae_dir)
    site = args.site or getattr(getattr(dictionary, "cfg", None), "site_in", "")
    if not site:
        raise ValueError("the dictionary records no site; pass --site (e.g. L2.resid_pre)")
    with folder_lock(args.out, "--out", "mechscope features"):  # checked writable before the statistics
        model = load_model_from(args)
        dictionary = beside(dictionary, model)
        check_sizes(args, model)
        windows = itertools.islice(open_token_stream(args.text, args.n_ctx, model, epochs=1),
                                   args.tokens // args.n_ctx + 1)
        index = build_feature_browser(model, dictionary, site, windows, args.tokens, args.out,
                                      dictionary_name=f"{args.sae_dir} ({site})")
    print(f"feature browser: {index}")
    if args.graphs:
        _link_graphs(args.out, args.graphs)
    return 0


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
