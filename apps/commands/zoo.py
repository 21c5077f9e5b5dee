"""``mechscope zoo``: list, inspect or rebuild the offline model zoo."""

from __future__ import annotations

import argparse
import json

from mechscope.apps.cli import command


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
