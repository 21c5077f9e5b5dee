"""``mechscope codebook``: train codebook features into a model, find codes, steer with them."""

from __future__ import annotations

import argparse
import json

from mechscope.apps.cli import command


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train", "find", "steer"],
                   help="train: run a TOML job; find: codes that detect a regex/token; steer: generate with codes forced on")
    p.add_argument("target", help="train: the TOML config; find/steer: a saved codebook model folder")
    p.add_argument("--out", default="runs/codebook", help="train: output folder (model, codebooks, report.json)")
    p.add_argument("--tokens", default=None, help="find/steer: space-separated token ids (the prompt, or the stream to search)")
    p.add_argument("--text", default=None, help="find/steer: text (needs the model's tokenizer) instead of --tokens")
    p.add_argument("--regex", default=None, help="find: regex over the decoded text; a token completing a match is a target")
    p.add_argument("--token-id", type=int, action="append", default=None, help="find: target token id (repeatable)")
    p.add_argument("--site", default=None, help="steer: codebook site, e.g. L0.mlp_out (find: restrict to it)")
    p.add_argument("--code", type=int, action="append", default=None, help="steer: code to force on (repeatable, at most k)")
    p.add_argument("--positions", type=int, nargs="*", default=[-1], help="steer: prompt positions to force (negative from the end)")
    p.add_argument("--force-generated", action="store_true", help="steer: also force the codes at every generated token")
    p.add_argument("--new-tokens", type=int, default=8, help="steer: tokens to generate")
    p.add_argument("--top", type=int, default=5, help="find: how many codes to list")


def _tokens(cbm, args: argparse.Namespace):
    import torch

    if args.tokens:
        try:
            ids = [int(t) for t in args.tokens.split()]
        except ValueError:
            raise ValueError(f"--tokens must be space-separated integers, got {args.tokens!r}") from None
        return torch.tensor([ids])
    if args.text:
        return cbm.model.to_tokens(args.text)
    raise ValueError("give the tokens with --tokens '1 2 3' or --text '...'")


@command("codebook", "Codebook features: train a model with codebook bottlenecks, find codes, steer by codes.", _options)
def codebook_cmd(args: argparse.Namespace) -> int:
    if args.action == "train":
        from mechscope.sae.codebook_job import load_config, run_codebook_job

        report = run_codebook_job(load_config(args.target), args.out)
        print(json.dumps({k: v for k, v in report.items() if k != "state_identification"}, indent=2))
        for site, row in report.get("state_identification", {}).items():
            print(f"state codes at {site}: precision {row['mean_precision']:.3f} recall {row['mean_recall']:.3f} "
                  f"(chance precision {row['chance_precision']:.3f})")
        print(f"saved: {args.out}")
        return 0
    from mechscope.sae.codebook_model import CodebookModel

    cbm = CodebookModel.load(args.target)
    tokens = _tokens(cbm, args)
    if args.action == "find":
        from mechscope.sae.steer import find_codes, regex_mask, token_mask

        if args.regex:
            target = regex_mask([cbm.model.to_str_tokens(row) for row in tokens], args.regex)
        elif args.token_id:
            target = token_mask(tokens, args.token_id)
        else:
            raise ValueError("find needs --regex PATTERN or --token-id ID")
        for m in find_codes(cbm, tokens, target, [args.site] if args.site else None, args.top):
            print(f"{m.site} group {m.group} code {m.code}: precision {m.precision:.3f} "
                  f"recall {m.recall:.3f} (fires {m.fires}x)")
        return 0
    from mechscope.sae.steer import generate

    if not args.site or not args.code:
        raise ValueError("steer needs --site SITE and at least one --code INDEX")
    free = generate(cbm, tokens, args.new_tokens)
    steered = generate(cbm, tokens, args.new_tokens, {args.site: args.code}, args.positions, args.force_generated)
    n = tokens.shape[1]
    print("prompt:   ", tokens[0].tolist())
    print("free:     ", free[0, n:].tolist(), repr("".join(cbm.model.to_str_tokens(free[0, n:]))))
    print("steered:  ", steered[0, n:].tolist(), repr("".join(cbm.model.to_str_tokens(steered[0, n:]))))
    return 0
