"""The ``mechscope`` command line: one subcommand per job, each a thin call into the library.

Every option has a one-line help; ``mechscope SUBCOMMAND --help`` lists them. Heavy imports
happen inside the handlers, so ``mechscope --help`` is instant.

Errors: `main` is the one place where exceptions become messages. A user error (a bad flag,
config value or file, a busy or unwritable folder, a full disk, too little memory) prints one
line naming the input and exits 2; anything else prints one line, a hint, and exits 1.
``--debug`` or ``MECHSCOPE_DEBUG=1`` lets every exception through with its traceback.
Subcommands check their flags and output folders before any expensive work.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}
# the order of `mechscope --help`: the main job, training, browsing, tracing, the rest
ORDER = ("demo", "train", "cache", "eval", "features", "trace", "edges", "routes", "attention", "trace-attention",
         "verify", "dream", "codebook", "zoo", "bench")


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
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also MECHSCOPE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(COMMANDS, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        help_text, build, handler = COMMANDS[name]
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        build(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand. A user error (bad flag, config, file, folder, disk, memory) ends in one
    line on stderr and exit code 2; an unexpected exception in one line and exit code 1. With
    ``--debug`` (or ``MECHSCOPE_DEBUG=1``) every exception propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    if args.debug or os.environ.get("MECHSCOPE_DEBUG", "") not in ("", "0"):
        return int(args.handler(args) or 0)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"mechscope {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns exceptions into messages
        msg, rc = describe_error(exc)
        print(f"mechscope {args.command}: error: {msg}", file=sys.stderr)
        if rc != 2:
            print(f"mechscope {args.command}: this looks like a bug; rerun with --debug (or "
                  "MECHSCOPE_DEBUG=1) for the traceback", file=sys.stderr)
        return rc


def describe_error(exc: BaseException) -> tuple[str, int]:
    """One line for ``exc`` and the exit code: 2 for what the user can fix, 1 for the rest."""
    first = lambda text: " ".join(str(text).split())[:2000] or type(exc).__name__  # noqa: E731
    if isinstance(exc, UnicodeDecodeError):  # a ValueError whose text never names the file
        return first(f"input is not UTF-8 text ({exc.reason} at byte {exc.start})"), 2
    if isinstance(exc, KeyError):
        return first(exc.args[0] if exc.args else exc), 2
    if isinstance(exc, ValueError):  # tomllib, json and every mechscope *Error that names the input
        return first(exc), 2
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        return first(f"out of memory ({str(exc)[:200]}): use smaller sizes (d_dict, batch_tokens, "
                     "--tokens, model_batch_size)"), 2
    if isinstance(exc, OSError):
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        if exc.errno == errno.ENOSPC:
            return first(f"no space left on the device writing {where or 'output'}; free space and "
                         "rerun (a training job resumes from its last checkpoint)"), 2
        return first(f"{exc.strerror or exc}: {where}" if where else exc), 2
    if type(exc).__name__ == "SafetensorError":
        return first(f"a safetensors file is damaged or not safetensors ({exc})"), 2
    return first(f"{type(exc).__name__}: {exc}"), 1


if __name__ == "__main__":
    # `python -m mechscope.apps.cli`: this file runs as __main__, while the command modules
    # register with the imported mechscope.apps.cli; run that module's main
    from mechscope.apps.cli import main as _main

    sys.exit(_main())
