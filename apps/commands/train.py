"""``mechscope train``: training jobs on a language model: a TOML file → activation stream → dictionaries → metrics.

A job file has two tables::

    [data]                       # DataConfig: where the activations come from
    model = "gpt2-shakespeare"
    text = "zoo:train"

    [sae]                        # RunConfig fields (flat); a list value is a sweep axis
    architecture = "topk"
    site_in = "L2.resid_post"
    d_dict = 1024
    k = [8, 16, 32]

``site_in`` (and ``site_out``) may be lists: one model pass feeds dictionaries at every site
(``site_in = ["L0.resid_post", "L1.resid_post"]``; runs, folders and results rows per site). With
``[data] activations = "DIR"`` (a ``mechscope cache`` folder) the job trains from the cache without
loading a model (sites and widths from its manifest; no held-out evaluation). ``[data] device``
(``auto`` = CUDA when present) and ``model_dtype`` place the model, stream and dictionaries;
``[sae] dtype`` / ``autocast`` set the dictionaries' precision.

Command-line overrides are ``table.field=value`` with TOML values (``sae.k=16``,
``data.model="llama-shakespeare"``, ``sae.k=[4,8]``). Everything is validated before any model is
loaded; ``sae.d_in``/``d_out`` default to the width of the model's sites.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mechscope.apps.cli import command
from mechscope.files import write_json
from mechscope.sae.config import RunConfig, expand_sweep

if TYPE_CHECKING:
    from mechscope.interp.tokens import TokenStream
    from mechscope.sae.splice_eval import HeldoutEval
    from mechscope.sae.sweep import RunResult

TABLES = ("data", "sae")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    """Where training activations come from."""

    # `__post_init__` is the type check, with messages naming the field (as in TrainConfig):
    # run-time checkers must not pre-empt it on the generated `__init__`
    __no_type_check__ = True

    model: str = _f("gpt2-shakespeare", "model: a zoo name, a local HF checkpoint folder, or a TransformerLens hub name")
    text: str = _f("zoo:train", "text: 'zoo:train' / 'zoo:heldout' (zoo corpus), a .txt file / folder / glob, "
                   "a token memmap (.npy / .bin from write_token_memmap), or 'hf:NAME[:SPLIT]' "
                   "(a Hugging Face dataset, streamed; needs the hub)")
    heldout_text: str = _f("zoo:heldout", "held-out text for evaluation (same forms as text)")
    n_ctx: int = _f(128, "tokens per context window (BOS included)")
    batch_tokens: int = _f(4096, "activation rows per training batch")
    model_batch_size: int = _f(16, "context windows per model forward pass")
    shuffle_buffer: int = _f(32768, "activation rows in the shuffle buffer (0 = no shuffling)")
    eval_windows: int = _f(64, "held-out windows for evaluation (reconstruction and CE loss)")
    seed: int = _f(0, "seed of the data order")
    device: str = _f("auto", "where the model, stream, dictionaries and evaluation run: auto (CUDA "
                     "when present), cpu, cuda, cuda:N")
    model_dtype: str = _f("float32", "dtype of the model weights and activations: float32, bfloat16, float16")
    activations: str = _f("", "train from this activation cache folder (a `mechscope cache` output) "
                          "instead of running the model; '' = run the model on data.text")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v, want = getattr(self, f.name), {"str": str, "int": int}[f.type]
            if not isinstance(v, want) or isinstance(v, bool):
                raise ValueError(f"config field data.{f.name}={v!r} is invalid: must be {f.type}"
                                 + (" (a quoted TOML string)" if f.type == "str" else ""))
        from mechscope.devices import check_device_name, check_dtype_name

        try:
            check_device_name(self.device)
        except ValueError as e:
            raise ValueError(f"config field data.device: {e}") from None
        try:
            object.__setattr__(self, "model_dtype", check_dtype_name(self.model_dtype))
        except ValueError as e:
            raise ValueError(f"config field data.model_dtype: {e}") from None
        if self.activations:
            from mechscope.interp.cache import MANIFEST

            if not (Path(self.activations) / MANIFEST).is_file():
                raise ValueError(f"config field data.activations={self.activations!r}: not an activation "
                                 f"cache folder (no {MANIFEST}; build one with `mechscope cache`)")
        for name in ("n_ctx", "batch_tokens", "model_batch_size", "eval_windows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"config field data.{name}={getattr(self, name)!r} is invalid: must be a positive integer")
        if self.n_ctx < 2:
            raise ValueError("config field data.n_ctx must be >= 2 (BOS + at least one token)")
        if self.shuffle_buffer and self.shuffle_buffer < self.batch_tokens:
            raise ValueError(f"config field data.shuffle_buffer={self.shuffle_buffer} must be 0 or >= "
                             f"data.batch_tokens={self.batch_tokens}")
        from mechscope.interp.tokens import check_text_spec

        for name in ("text", "heldout_text"):
            check_text_spec(getattr(self, name), f"config field data.{name}")


def fields_help(cls: type) -> list[tuple[str, str, Any, str]]:
    return [(f.name, f.type, f.default, f.metadata["help"]) for f in dataclasses.fields(cls)]


@dataclass(frozen=True)
class Job:
    data: DataConfig
    sae: dict[str, Any]  # RunConfig fields, lists = sweep axes (d_in filled from the model)
    configs: tuple[RunConfig, ...]


def parse_override(text: str) -> tuple[str, str, Any]:
    """``table.field=value`` → (table, field, TOML-parsed value; bare words are strings)."""
    key, sep, raw = text.partition("=")
    table, dot, name = key.strip().partition(".")
    if not sep or not dot or table not in TABLES:
        raise ValueError(f"override {text!r} must look like data.FIELD=VALUE or sae.FIELD=VALUE")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return table, name, value


def load_job(path: "str | Path | None" = None, overrides: Sequence[str] = (), d_in: int | None = None) -> Job:
    """Read, override and validate a job (no model is loaded here)."""
    raw: dict[str, Any] = read_toml(path, "config file") if path is not None else {}
    unknown = sorted(set(raw) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown} in {path}; valid tables: {', '.join(TABLES)}")
    tables = {t: dict(raw.get(t, {})) for t in TABLES}
    for table, name, value in map(parse_override, overrides):
        tables[table][name] = value
    data_names = {f.name for f in dataclasses.fields(DataConfig)}
    bad = sorted(set(tables["data"]) - data_names)
    if bad:
        raise ValueError(f"unknown config field(s) data.{bad}; valid data fields: {', '.join(sorted(data_names))}")
    data = DataConfig(**tables["data"])
    sae = tables["sae"]
    # validate every sweep point now, with a placeholder width when the model decides it
    probe = {"d_in": d_in or sae.get("d_in") or 1, **{k: v for k, v in sae.items() if k != "d_in"}}
    if "d_dict" not in probe:
        raise ValueError("config field sae.d_dict is required (number of latents)")
    try:
        configs = expand_sweep(probe)
    except (TypeError, ValueError) as e:  # TrainConfig names its fields bare: say which table
        raise ValueError(str(e).replace("config field ", "config field sae.", 1)) from None
    _check_wandb(sae.get("wandb_project", ""))
    return Job(data, sae, tuple(configs))


def read_toml(path: "str | Path", what: str) -> dict[str, Any]:
    """A TOML file as a dict; every failure (missing, a folder, unreadable, not UTF-8, not TOML)
    is a ValueError naming the file."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{what} {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be read ({e.strerror or e})") from None


_WANDB_BAD = set("/\\#?%:")


def _check_wandb(projects: Any) -> None:
    """wandb would fail (or prompt for a login) only after the model has run: check first."""
    projects = [p for p in (projects if isinstance(projects, list) else [projects]) if p]
    for p in projects:
        if _WANDB_BAD & set(p) or ".." in p:
            raise ValueError(f"config field sae.wandb_project={p!r} is invalid: a W&B project name "
                             "cannot contain / \\ # ? % : or ..")
    if not projects:
        return
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ValueError(f"config field sae.wandb_project={projects[0]!r} needs the wandb package: "
                         "pip install 'mechscope[wandb]' (or leave wandb_project empty)")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")):
        raise ValueError(f"config field sae.wandb_project={projects[0]!r} needs a Weights & Biases login: "
                         "run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline")


def run_job(job: Job, out_dir: "str | Path", resume: bool = True, progress: bool = True) -> list["RunResult"]:
    """Train the job's dictionaries on one activation stream, evaluate them on held-out text.

    The stream is the model run over ``data.text`` (one forward feeds every site the sweep lists)
    or, with ``data.activations``, a cache folder read without loading any model. Returns one
    `RunResult` per dictionary (config, last training step, held-out evaluation: None when
    training from a cache) and writes ``out_dir/results.{json,csv}`` (their rows),
    ``runs/<name>/eval.json`` and ``job.json``.
    """
    from mechscope.devices import resolve_device
    from mechscope.lock import folder_lock
    from mechscope.sae.distributed import init_from_env

    # under torchrun: join the process group (gloo on CPUs, NCCL with one GPU per local rank)
    world, device = init_from_env(resolve_device(job.data.device))
    if not world.main:  # rank 0 holds the folder's lock for every rank
        return _run_locked(job, Path(out_dir), resume, progress, world, device)
    with folder_lock(out_dir, "--out", "mechscope train"):  # one writer; fails before any work
        return _run_locked(job, Path(out_dir), resume, progress, world, device)


def _run_locked(job: Job, out: Path, resume: bool, progress: bool, world: Any, device: Any) -> list["RunResult"]:
    from mechscope.sae.distributed import barrier
    from mechscope.sae.sweep import sweep_rows, swept_fields, train_sweep, write_table
    from mechscope.sae.trainer import CHECKPOINT

    d = job.data
    named = site_pairs(job.sae)
    if d.activations:
        model, (source, widths, pairs) = None, _cache_source(d, named, device)
    else:
        model, source, widths, pairs = _model_source(d, named, device)
    configs = job_configs(job.sae, pairs, widths, progress and world.main)
    _check_memory(configs)
    if resume and world.main and (out / CHECKPOINT).exists():
        _check_resumable(out / CHECKPOINT, configs)  # before job.json is rewritten
    out.mkdir(parents=True, exist_ok=True)
    if world.main:
        write_json(out / "job.json", {"data": dataclasses.asdict(d), "sae": job.sae}, indent=2)
    swept = train_sweep(configs, source, out, resume=resume, metadata=_trained_on(d, model, source),
                        device=device, world=world)
    # data parallel: rank 0 evaluates the one dictionary; a sharded sweep: each rank its own runs
    evaluates = world.main or len(configs) > 1
    evals: list[Any] = [None] * len(swept.runs)
    if model is not None and evaluates:
        for (si, so), idx in _by_site(swept.runs).items():
            got = evaluate_on_heldout(model, [swept.runs[i].dictionary for i in idx], d, si, so)
            for i, e in zip(idx, got):
                evals[i] = e
    results = [dataclasses.replace(r, eval=e) for r, e in zip(swept.results, evals)]
    if evaluates:
        for r in results:
            write_json(r.path / "eval.json", r.row(), indent=2)
    barrier(world)
    if world.main:
        rows = sweep_rows(configs, out, tuple(swept_fields(configs))) if world.distributed else [r.row() for r in results]
        write_table(rows, out)
    return results


def _check_resumable(checkpoint: Path, configs: Sequence[RunConfig]) -> None:
    from mechscope.sae.checkpoint import read_checkpoint

    try:
        saved = read_checkpoint(checkpoint)[0]["configs"]
    except (ValueError, KeyError):
        raise ValueError(f"{checkpoint} is not a readable checkpoint; pass --no-resume to start over "
                         "(or choose another --out)") from None
    if saved != [c.to_dict() for c in configs]:
        diff = sorted({k for s, c in zip(saved, configs) for k, v in c.to_dict().items() if s.get(k) != v}
                      | ({"number of runs"} if len(saved) != len(configs) else set()))
        raise ValueError(f"{checkpoint} was written by a job with other settings ({', '.join(diff)}); "
                         "pass --no-resume to start over, or choose another --out")


def _check_memory(configs: Sequence[RunConfig]) -> None:
    """Refuse dictionaries whose weights, gradients and Adam state (4 fp32 copies) exceed RAM:
    the allocation would fail deep in torch, or the OOM killer would end the process."""
    dicts = [c.dictionary for c in configs]
    need = sum(4 * 4 * d.d_dict * (d.d_in + d.d_output) for d in dicts)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        biggest = max(dicts, key=lambda d: d.d_dict)
        raise ValueError(f"config field sae.d_dict={biggest.d_dict} is too large: the {len(configs)} "
                         f"dictionar{'y' if len(configs) == 1 else 'ies'} need about {need / 2**30:.1f} GiB "
                         f"(weights, gradients, Adam state) and this machine has {have / 2**30:.1f} GiB")


def _trained_on(d: DataConfig, model: Any, source: Any) -> dict[str, Any]:
    """What SAELens records about the activations a dictionary was trained on."""
    if model is None:  # a cache: its manifest names the model and token stream
        manifest = getattr(getattr(source, "source", source), "manifest", {})
        tokens = manifest.get("tokens") or {}
        return {"model_name": manifest.get("model", ""), "context_size": tokens.get("n_ctx", d.n_ctx),
                "dataset_path": d.activations}
    tokens = source.token_stream
    return {"model_name": model.name, "context_size": d.n_ctx, "prepend_bos": bool(tokens.prepend_bos),
            "dataset_path": d.text}


def site_pairs(sae: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The job's ``(site_in, site_out)`` pairs; ``site_in`` (and ``site_out``) may be lists."""
    si = sae.get("site_in") or _missing("site_in")
    ins = list(si) if isinstance(si, (list, tuple)) else [si]
    so = sae.get("site_out", "")
    outs = list(so) if isinstance(so, (list, tuple)) else [so] * len(ins)
    if len(outs) != len(ins):
        raise ValueError(f"sae.site_in ({len(ins)} sites) and sae.site_out ({len(outs)}) must pair up")
    return list(zip(ins, outs))


def job_configs(sae: Mapping[str, Any], pairs: Sequence[tuple[str, str]], widths: Mapping[str, int],
                progress: bool = True) -> list[RunConfig]:
    """Every run of the job: the sweep of the other fields at each site pair (sites outermost),
    ``d_in`` / ``d_out`` read off the sites (an explicit value must agree)."""
    rest = {k: v for k, v in sae.items() if k not in ("site_in", "site_out")}
    transcoder = bool(sae.get("transcoder", False))
    configs: list[RunConfig] = []
    for si, so in pairs:
        point = {"progress": progress, **rest, "site_in": si, "d_in": widths[si]}
        for name, site in (("d_in", si), ("d_out", so or si)):
            given = sae.get(name)
            if given and (name == "d_in" or transcoder) and given != widths[site]:
                raise ValueError(f"sae.{name}={given} but site {site} has width {widths[site]}")
        if so:
            point["site_out"] = so
        if transcoder:
            point["d_out"] = widths[so or si]
        configs += expand_sweep(point)
    return configs


def _by_site(runs: Sequence[Any]) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(runs):
        dc = r.config.dictionary
        groups.setdefault((dc.site_in, dc.site_out or dc.site_in), []).append(i)
    return groups


Pairs = list[tuple[str, str]]


def _model_source(d: DataConfig, pairs: Pairs, device: Any) -> tuple[Any, Any, dict[str, int], Pairs]:
    """The model, its activation stream over ``d.text`` at every site of the job, site widths,
    the site pairs in canonical names."""
    from mechscope.interp.models import load_model
    from mechscope.interp.stream import ActivationStream
    from mechscope.interp.tokens import open_token_stream

    model = load_model(d.model, device=device, dtype=d.model_dtype)
    if d.n_ctx > model.n_ctx:
        raise ValueError(f"config field data.n_ctx={d.n_ctx} exceeds the context of model {model.name!r} "
                         f"({model.n_ctx} tokens)")
    for name in ("text", "heldout_text"):  # an empty or unreadable text fails now, not mid-run
        next(iter(open_token_stream(getattr(d, name), d.n_ctx, model, seed=d.seed, epochs=1)))
    canon = [(str(model.site(si)), str(model.site(so)) if so else "") for si, so in pairs]
    sites = sorted({model.site(s) for p in canon for s in p if s})
    stream = ActivationStream(
        model, open_token_stream(d.text, d.n_ctx, model, seed=d.seed, epochs=None), sites,
        batch_tokens=d.batch_tokens, model_batch_size=d.model_batch_size,
        shuffle_buffer=d.shuffle_buffer, seed=d.seed, drop_last=True, device=device,
    )
    return model, stream, {str(s): w for s, w in stream.d.items()}, canon


def _cache_source(d: DataConfig, pairs: Pairs, device: Any) -> tuple[Any, dict[str, int], Pairs]:
    """The cache folder as a shuffled, resumable source of the job's sites (no model), widths
    from its manifest; a site the cache lacks is an error naming the cached ones."""
    from mechscope.interp.cache import CachedActivations
    from mechscope.interp.shuffle import ShuffleBuffer
    from mechscope.interp.sites import Site

    canon = [(str(Site.parse(si)), str(Site.parse(so)) if so else "") for si, so in pairs]
    sites = sorted({Site.parse(s) for p in canon for s in p if s})
    cache = CachedActivations(d.activations, d.batch_tokens, shuffle=bool(d.shuffle_buffer), seed=d.seed,
                              sites=sites, epochs=None, device=device, drop_last=True)
    source: Any = cache
    if d.shuffle_buffer:
        source = ShuffleBuffer(cache, d.shuffle_buffer, d.batch_tokens, seed=d.seed, drop_last=True)
    return source, {str(s): w for s, w in cache.d.items()}, canon


def evaluate_on_heldout(model: Any, dictionaries: Sequence[Any], data: DataConfig, site_in: Any,
                        site_out: Any) -> list["HeldoutEval"]:
    """Reconstruction metrics and CE loss recovered of every dictionary on ``data.eval_windows``
    held-out windows, tokenised once; clean and zero-ablated losses computed once for all
    (`mechscope.sae.splice_eval.evaluate_heldout`). Reconstruction rows skip special tokens."""
    import itertools

    from mechscope.interp.tokens import open_token_stream
    from mechscope.sae.splice_eval import evaluate_heldout

    held = open_token_stream(data.heldout_text, data.n_ctx, model, epochs=1)
    windows = list(itertools.islice(held, data.eval_windows))
    return evaluate_heldout(model, dictionaries, site_in, windows, site_out=site_out,
                            batch_size=data.model_batch_size, keep_mask=held.keep_mask)


def _missing(name: str) -> str:
    raise ValueError(f"config field sae.{name} is required (e.g. 'L2.resid_post')")


# -- the command ------------------------------------------------------------------------------
def _fields_epilog() -> str:
    from mechscope.sae.config import fields_help as sae_fields

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
    p.add_argument("--device", help="overrides data.device: auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--dtype", help="overrides data.model_dtype: float32, bfloat16, float16")


@command("train", "Train SAEs / transcoders (a sweep if any field is a list) from a TOML job file.", _train_options)
def train_cmd(args: argparse.Namespace) -> int:
    flags = [f"data.{k}={json.dumps(v)}" for k, v in (("device", args.device), ("model_dtype", args.dtype)) if v]
    job = load_job(args.config, [*args.overrides, *flags])  # rejects bad configs before any work
    print(f"training {len(job.configs)} dictionar{'y' if len(job.configs) == 1 else 'ies'} "
          f"on {job.data.model} -> {args.out}")
    for r in run_job(job, args.out, resume=not args.no_resume):
        if r.eval is None:  # trained from a cache: no model to evaluate with
            print(f"  {r.name}: train FVU {float(r.train.fvu):.3f}  L0 {float(r.train.l0):.1f}")
            continue
        rec, spliced = r.eval.reconstruction, r.eval.spliced
        print(f"  {r.name}: FVU {rec.fvu:.3f}  L0 {rec.l0:.1f}  CE loss recovered {spliced.ce_loss_recovered:.3f}")
    print(f"results: {args.out}/results.csv")
    return 0
