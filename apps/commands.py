"""Handlers of the ``mechscope`` subcommands (registered on import by `mechscope.apps.cli`)."""

from __future__ import annotations

import argparse
import json

from mechscope.apps.cli import command


# -- zoo ------------------------------------------------------------------------------------------
def _zoo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show", "build"], help="list the models, show a card, or rebuild a model")
    p.add_argument("name", nargs="?", help="zoo model name (for show / build)")
    p.add_argument("--out", default=None, help="build into this folder instead of the package's zoo folder")
    p.add_argument("--seed", type=int, default=0, help="random seed of the build")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="tiny smoke build (seconds), for testing the recipe")


@command("zoo", "List, inspect or rebuild the offline model zoo.", _zoo_options)
def zoo_cmd(args: argparse.Namespace) -> int:
    from mechscope.interp import zoo

    if args.action == "list":
        for name in zoo.names():
            card = zoo.card(name)
            default = " (default)" if name == zoo.DEFAULT else ""
            print(f"{name}{default}: {card.get('description', '')}")
        return 0
    if not args.name:
        raise ValueError(f"'zoo {args.action}' needs a model name; zoo models: {', '.join(zoo.names())}")
    if args.action == "show":
        print(json.dumps(zoo.card(args.name), indent=2))
        return 0
    out = zoo.build(args.name, out_dir=args.out, seed=args.seed, steps=args.steps, quick=args.quick)
    print(f"built {args.name} -> {out}")
    return 0


# -- bench ----------------------------------------------------------------------------------------
BENCHES = ("capture", "kernels", "train", "routes", "attribution")


def _bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=BENCHES, help="what to benchmark")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run with tiny shapes")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (medians are reported)")


@command("bench", "Benchmarks that print ratios against a baseline measured in the same run.", _bench_options)
def bench_cmd(args: argparse.Namespace) -> int:
    import torch

    print(f"environment: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={'yes' if torch.cuda.is_available() else 'no'}")
    if args.which == "capture":
        from mechscope.interp.bench import bench_capture, format_capture

        print(format_capture(bench_capture(repeats=args.repeats, quick=args.quick)))
    elif args.which == "kernels":
        from mechscope.kernels.bench import bench_kernels, format_table

        print(format_table(bench_kernels(repeats=args.repeats, quick=args.quick)))
    elif args.which == "train":
        from mechscope.sae.bench import bench_train, format_bench as format_train

        print(format_train(bench_train(quick=args.quick)))
    elif args.which == "routes":
        from mechscope.circuits.bench_routes import bench_routes, format_routes_bench

        print(format_routes_bench(bench_routes(quick=args.quick)))
    else:
        from mechscope.circuits.bench_attribution import bench_attribution, format_bench

        print(format_bench(bench_attribution(quick=args.quick)))
    return 0


# -- train ----------------------------------------------------------------------------------------
def _fields_epilog() -> str:
    from mechscope.sae.config import fields_help as sae_fields
    from mechscope.sae.job import DataConfig, fields_help

    lines = ["config fields ([data] and [sae] tables of the TOML file; override as table.field=value):"]
    for table, rows in (("data", fields_help(DataConfig)), ("sae", sae_fields())):
        lines += [f"  {table}.{name} ({typ}, default {default!r}): {help_}" for name, typ, default, help_ in rows]
    return "\n".join(lines)


def _train_options(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _fields_epilog()
    p.add_argument("config", help="TOML job file with [data] and [sae] tables (see examples/configs/)")
    p.add_argument("overrides", nargs="*", help="overrides like sae.k=16 or data.model=\"llama-shakespeare\"")
    p.add_argument("--out", default="runs/train", help="output folder (checkpoint, runs/<name>/dictionary, results)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")


@command("train", "Train SAEs / transcoders (a sweep if any field is a list) from a TOML job file.", _train_options)
def train_cmd(args: argparse.Namespace) -> int:
    from mechscope.sae.job import load_job, run_job

    job = load_job(args.config, args.overrides)  # rejects bad configs before any work
    print(f"training {len(job.configs)} dictionar{'y' if len(job.configs) == 1 else 'ies'} "
          f"on {job.data.model} -> {args.out}")
    rows = run_job(job, args.out, resume=not args.no_resume)
    for row in rows:
        print(f"  {row['run']}: FVU {row['eval_fvu']:.3f}  L0 {row['eval_l0']:.1f}  "
              f"CE loss recovered {row['eval_ce_loss_recovered']:.3f}")
    print(f"results: {args.out}/results.csv")
    return 0


# -- demo -----------------------------------------------------------------------------------------
def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run with a tiny SAE")


@command("demo", "The main job: train, evaluate, save and browse a top-k SAE on the default zoo model.", _demo_options)
def demo_cmd(args: argparse.Namespace) -> int:
    from mechscope.apps.demo import format_demo, run_demo

    print(format_demo(run_demo(args.out, quick=args.quick)))
    return 0


# -- cache ----------------------------------------------------------------------------------------
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
    from mechscope.interp.cache import build_cache
    from mechscope.interp.models import load_model
    from mechscope.sae.job import token_windows

    model = load_model(args.model)
    stream = token_windows(model, args.text, args.n_ctx, epochs=None)
    path = build_cache(model, stream, args.sites, args.out, args.tokens, overwrite=args.overwrite)
    print(f"cache written: {path}")
    return 0


# -- features -------------------------------------------------------------------------------------
def _features_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae_dir", help="a dictionary folder (mechscope, SAELens or sparsify format)")
    p.add_argument("--out", required=True, help="output folder of the offline browser (index.html)")
    p.add_argument("--model", default="gpt2-shakespeare", help="model the dictionary was trained on")
    p.add_argument("--site", default=None, help="site of the dictionary (default: from its metadata)")
    p.add_argument("--text", default="zoo:heldout", help="text spec to compute feature statistics on")
    p.add_argument("--tokens", type=int, default=65536, help="tokens to compute statistics over")
    p.add_argument("--n-ctx", type=int, default=128, help="tokens per context window")


@command("features", "Compute feature cards for a dictionary and write the offline feature browser.", _features_options)
def features_cmd(args: argparse.Namespace) -> int:
    import itertools

    from mechscope.apps.browser import build_feature_browser
    from mechscope.interp.models import load_model
    from mechscope.sae.io import load_dictionary
    from mechscope.sae.job import token_windows

    model = load_model(args.model)
    dictionary = load_dictionary(args.sae_dir)
    site = args.site or getattr(getattr(dictionary, "cfg", None), "site_in", "")
    if not site:
        raise ValueError("the dictionary records no site; pass --site (e.g. L2.resid_pre)")
    windows = itertools.islice(token_windows(model, args.text, args.n_ctx, epochs=1), args.tokens // args.n_ctx + 1)
    index = build_feature_browser(model, dictionary, site, windows, args.tokens, args.out,
                                  dictionary_name=f"{args.sae_dir} ({site})")
    print(f"feature browser: {index}")
    return 0
