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
BENCHES = ("capture", "kernels", "train")


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
    else:
        from mechscope.sae.bench import bench_train, format_train

        print(format_train(bench_train(quick=args.quick)))
    return 0
