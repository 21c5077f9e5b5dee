"""``mechscope cache``: activations at sites written to an on-disk safetensors cache.

The cache is stored in the model's dtype (``--dtype``); a build that dies resumes from its last
complete shard when run again with the same arguments. `mechscope train` reads the folder with
``data.activations = "DIR"``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechscope.apps.cli import command
from mechscope.apps.commands.common import device_options


def _cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2-shakespeare", help="model spec (zoo name, HF folder, hub name)")
    p.add_argument("--sites", nargs="+", required=True, help="sites to cache, e.g. L2.resid_pre L1.mlp_out")
    p.add_argument("--text", default="zoo:train", help="text spec, as data.text of a train job")
    p.add_argument("--tokens", type=int, default=1_000_000, help="activation rows to write")
    p.add_argument("--n-ctx", type=int, default=128, help="tokens per context window")
    p.add_argument("--out", required=True, help="cache folder (safetensors shards + manifest.json)")
    p.add_argument("--rows-per-shard", type=int, default=65536, help="activation rows per shard file")
    p.add_argument("--batch-size", type=int, default=8, help="context windows per model forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache folder")
    p.add_argument("--no-resume", action="store_true",
                   help="start over instead of resuming an unfinished build from its last complete shard")
    device_options(p)


@command("cache", "Write activations at sites to an on-disk safetensors cache.", _cache_options)
def cache_cmd(args: argparse.Namespace) -> int:
    from mechscope.interp.cache import MANIFEST, build_cache
    from mechscope.apps.commands.common import check_sizes, load_model_from
    from mechscope.interp.tokens import open_token_stream
    from mechscope.lock import folder_lock

    check_sizes(args)
    if (Path(args.out) / MANIFEST).exists() and not args.overwrite:
        raise ValueError(f"--out {args.out} already holds an activation cache; pass --overwrite to replace it")
    with folder_lock(args.out, "--out", "mechscope cache"):
        model = load_model_from(args)
        check_sizes(args, model)
        stream = open_token_stream(args.text, args.n_ctx, model, epochs=None)
        path = build_cache(model, stream, args.sites, args.out, args.tokens, rows_per_shard=args.rows_per_shard,
                           model_batch_size=args.batch_size, dtype=args.dtype, device=model.device,
                           overwrite=args.overwrite, resume=not args.no_resume, progress=True)
    print(f"cache written: {path}")
    return 0
