"""``mechscope cache``: activations at sites written to an on-disk safetensors cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from mechscope.apps.cli import command


def _cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    p.add_argument("--sites", nargs="+", required=True, help="sites to cache, e.g. L2.resid_pre L1.mlp_out")
    p.add_argument("--text", default="zoo:train", help="text spec, as data.text of a train job")
    p.add_argument("--tokens", type=int, default=1_000_000, help="activation rows to write")
    p.add_argument("--n-ctx", type=int, default=128, help="tokens per context window")
    p.add_argument("--out", required=True, help="cache folder (safetensors shards + manifest.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache folder")


@command("cache", "Write activations at sites to an on-disk safetensors cache.", _cache_options)
def cache_cmd(args: argparse.Namespace) -> int:
    from mechscope.interp.cache import MANIFEST, build_cache
    from mechscope.interp.models import load_model
    from mechscope.apps.commands.common import check_sizes
    from mechscope.interp.tokens import open_token_stream
    from mechscope.lock import folder_lock

    check_sizes(args)
    if (Path(args.out) / MANIFEST).exists() and not args.overwrite:
        raise ValueError(f"--out {args.out} already holds an activation cache; pass --overwrite to replace it")
    with folder_lock(args.out, "--out", "mechscope cache"):
        model = load_model(args.model)
        check_sizes(args, model)
        stream = open_token_stream(args.text, args.n_ctx, model, epochs=None)
        path = build_cache(model, stream, args.sites, args.out, args.tokens, overwrite=args.overwrite)
    print(f"cache written: {path}")
    return 0
