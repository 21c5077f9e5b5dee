"""One module per ``mechscope`` subcommand; importing one registers its handler with `mechscope.apps.cli`.

Library packages take typed values; everything that reads files, prompts and flags lives here.
"""

MODULES = ("demo", "train", "cache", "eval", "features", "trace", "edges", "routes", "attention", "verify",
           "dream", "codebook", "zoo", "bench")
