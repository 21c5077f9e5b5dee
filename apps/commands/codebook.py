"""``mechscope codebook``: a codebook-features job from a TOML file: base model → codebooks → fine-tune → report → save.

Tables (see examples/configs/codebook_fsm.toml):

* ``[fsm]`` (`TokFSM` fields + ``n_steps``, states per walk) *or* ``[text]`` (``model``: a
  `load_model` spec; ``text`` / ``heldout_text``: text specs of
  `mechscope.interp.tokens.check_text_spec`, e.g. ``zoo:train``, a .txt file; ``n_ctx``).
* ``[model]`` (FSM only): ``n_layers``, ``d_model``, ``n_heads``, ``d_mlp``, ``seed``.
* ``[pretrain]`` (FSM only) and ``[finetune]``: `LMTrainConfig` fields plus ``batch_size``.
* ``[codebook]``: `CodebookSpec` fields; ``kmeans_iters``.
* ``[eval]``: ``sequences`` (held-out walks / windows), ``steer_prompts_per_state``.

The report (``report.json`` next to the saved `CodebookModel`) holds the loss increase
(`mechscope.sae.codebook_features.train.loss_increase`) and, for the FSM, the transition, state
identification and steering measures of `mechscope.sae.codebook_features.fsm`.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any

import torch

from mechscope.apps.cli import command
from mechscope.files import write_text

TABLES = ("fsm", "text", "model", "pretrain", "finetune", "codebook", "eval")


def load_config(path: "str | Path") -> dict[str, dict[str, Any]]:
    from mechscope.apps.commands.train import read_toml

    cfg = read_toml(path, "codebook config")
    unknown = sorted(set(cfg) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown} in {path}; valid tables: {', '.join(TABLES)}")
    if ("fsm" in cfg) == ("text" in cfg):
        raise ValueError(f"{path}: give exactly one of [fsm] (TokFSM task) or [text] (a model and a corpus)")
    if "codebook" not in cfg:
        raise ValueError(f"{path}: the [codebook] table (sites, n_codes, k, ...) is required")
    from mechscope.interp.tokens import check_text_spec

    for name in ("text", "heldout_text"):
        if name in cfg.get("text", {}):
            check_text_spec(cfg["text"][name], f"{path}: text.{name}")
    return cfg


def _train_cfg(table: Mapping[str, Any]):
    from mechscope.interp.lm_train import LMTrainConfig

    t = dict(table)
    batch = t.pop("batch_size", 32)
    return LMTrainConfig.from_dict(t), int(batch)


def run_codebook_job(cfg: Mapping[str, Mapping[str, Any]], out_dir: "str | Path",
                     log: Callable[[str], None] = print, device: str = "auto") -> dict[str, Any]:
    """Run a job (a parsed config) on ``device`` and save the codebook model and ``report.json``
    in ``out_dir``."""
    from mechscope.devices import resolve_device

    from mechscope.sae.codebook_features import fsm as F
    from mechscope.sae.codebook_features.model import CodebookModel, CodebookSpec
    from mechscope.interp.lm_train import train_lm
    from mechscope.sae.codebook_features.train import finetune, loss_increase
    from mechscope.interp.tokfsm import TokFSM

    dev = resolve_device(device)
    cb_table = dict(cfg["codebook"])
    kmeans_iters = int(cb_table.pop("kmeans_iters", 10))
    spec = CodebookSpec.from_dict(cb_table)
    ft_cfg, ft_batch = _train_cfg(cfg.get("finetune", {}))
    ev = dict(cfg.get("eval", {}))
    n_eval = int(ev.get("sequences", 128))
    report: dict[str, Any] = {}
    if "fsm" in cfg:
        f = dict(cfg["fsm"])
        n_steps = int(f.pop("n_steps", 16))
        fsm = TokFSM(**f)
        model = F.fsm_model(fsm, n_steps, **cfg.get("model", {}), device=dev)
        pre_cfg, pre_batch = _train_cfg(cfg.get("pretrain", {}))
        log(f"pre-training {model.name} ({pre_cfg.steps} steps)")
        train_lm(model, F.fsm_sampler(fsm, pre_batch, n_steps, dev), pre_cfg,
                 log=lambda r: log(f"  pretrain {r['step']}: loss {r['lm_loss']:.4f}"))
        report["base_transitions"] = F.transition_report(model, fsm, n_steps, n_eval)._asdict()
        sample = F.fsm_sampler(fsm, ft_batch, n_steps, dev)
        init_tokens = fsm.sample(max(ft_batch, 64), n_steps, torch.Generator().manual_seed(7)).tokens.to(dev)
        heldout = fsm.sample(n_eval, n_steps, torch.Generator().manual_seed(8)).tokens.to(dev)
    else:
        from mechscope.interp.lm_train import random_windows
        from mechscope.interp.models import load_model
        from mechscope.interp.tokens import token_ids

        t = dict(cfg["text"])
        model = load_model(t.get("model", "gpt2-shakespeare"), device=str(dev))
        if model.tokenizer is None:
            raise ValueError(f"model {model.name!r} has no tokenizer; a [text] job needs one")
        n_ctx = int(t.get("n_ctx", 64))
        bos = model.require_bos_id("the [BOS] + text windows")
        train = token_ids(t.get("text", "zoo:train"), model)
        held = token_ids(t.get("heldout_text", "zoo:heldout"), model)

        def sample(gen: torch.Generator) -> torch.Tensor:
            return random_windows(train, ft_batch, n_ctx, bos, gen).to(dev)

        init_tokens = sample(torch.Generator().manual_seed(7))
        heldout = random_windows(held, n_eval, n_ctx, bos, torch.Generator().manual_seed(8)).to(dev)
    base = copy.deepcopy(model)
    cbm = CodebookModel(model, spec)
    cbm.init_codebooks(init_tokens, kmeans_iters=kmeans_iters)
    log(f"fine-tuning with codebooks at {', '.join(spec.sites)} ({ft_cfg.steps} steps)")
    finetune(cbm, sample, ft_cfg, lambda r: log(f"  finetune {r['step']}: loss {r['lm_loss']:.4f} "
                                                 f"aux {r['aux_loss']:.4f} replaced {r['replaced_codes']}"))
    report["loss"] = loss_increase(base, cbm, heldout)._asdict()
    if "fsm" in cfg:
        report["transitions"] = F.transition_report(cbm, fsm, n_steps, n_eval)._asdict()
        ids = F.state_identification(cbm, fsm, n_eval, n_steps)
        report["state_identification"] = {
            n: {"mean_precision": sc.mean_precision(), "mean_recall": sc.mean_recall(),
                "chance_precision": sc.chance_precision, "codes": sc.codes.tolist()} for n, sc in ids.items()}
        # the paper's intervention: the target state's codes forced at every codebook at once
        codes = F.state_codes(cbm, fsm, n_eval, n_steps)
        report["steering"] = F.steering_report(cbm, fsm, codes, n_steps,
                                               int(ev.get("steer_prompts_per_state", 8)))._asdict()
    out = Path(out_dir)
    cbm.save(out, extra={"config": {k: dict(v) for k, v in cfg.items()}})
    write_text(out / "report.json", json.dumps(report, indent=2))
    return report


# -- the command ------------------------------------------------------------------------------
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
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


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
        from mechscope.lock import folder_lock

        cfg = load_config(args.target)
        with folder_lock(args.out, "--out", "mechscope codebook train"):
            report = run_codebook_job(cfg, args.out, device=args.device)
        print(json.dumps({k: v for k, v in report.items() if k != "state_identification"}, indent=2))
        for site, row in report.get("state_identification", {}).items():
            print(f"state codes at {site}: precision {row['mean_precision']:.3f} recall {row['mean_recall']:.3f} "
                  f"(chance precision {row['chance_precision']:.3f})")
        st = report.get("steering")
        if st:
            print(f"steering (the target state's codes forced at all {st['n_codebooks']} codebooks, last prompt "
                  f"token): generated next state follows the target {st['follow_rate']:.3f} of the time "
                  f"(unsteered {st['follow_rate_unsteered']:.3f}, chance {st['chance']:.3f}; {st['n_prompts']} prompts)")
        print(f"saved: {args.out}")
        return 0
    from mechscope.sae.codebook_features.model import CodebookModel

    from mechscope.devices import resolve_device

    cbm = CodebookModel.load(args.target, device=str(resolve_device(args.device)))
    tokens = _tokens(cbm, args)
    if args.action == "find":
        from mechscope.sae.codebook_features.steer import find_codes, regex_mask, token_mask

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
    from mechscope.sae.codebook_features.steer import generate

    if not args.site or not args.code:
        raise ValueError("steer needs --site SITE and at least one --code INDEX")
    free = generate(cbm, tokens, args.new_tokens)
    steered = generate(cbm, tokens, args.new_tokens, {args.site: args.code}, args.positions, args.force_generated)
    n = tokens.shape[1]
    print("prompt:   ", tokens[0].tolist())
    print("free:     ", free[0, n:].tolist(), repr("".join(cbm.model.to_str_tokens(free[0, n:]))))
    print("steered:  ", steered[0, n:].tolist(), repr("".join(cbm.model.to_str_tokens(steered[0, n:]))))
    return 0
