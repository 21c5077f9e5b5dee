"""The ``mechscope`` command line: one subcommand per job, each a thin call into the library.

Every option has a one-line help; ``mechscope SUBCOMMAND --help`` lists them. Heavy imports
happen inside the handlers, so ``mechscope --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}
# the order of `mechscope --help`: the main job, training, browsing, tracing, the rest
ORDER = ("demo", "train", "cache", "features", "trace", "routes", "trace-attention", "verify",
         "codebook", "zoo", "bench")


def command(name: str, help: str, options: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register a handler as subcommand ``name`` whose ``options(parser)`` adds flags."""
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (help, options, handler)
        return handler
    return register


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from mechscope import __version__
    from mechscope.apps.commands import MODULES

    for module in MODULES:  # importing a command module registers it
        importlib.import_module(f"mechscope.apps.commands.{module}")

    parser = argparse.ArgumentParser(
        prog="mechscope", description="Mechanistic interpretability toolkit: capture, dictionaries, circuits.",
    )
    parser.add_argument("--version", action="version", version=f"mechscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(COMMANDS, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        help_text, build, handler = COMMANDS[name]
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        build(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"mechscope {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
