"""A table of bad command-line inputs and the judge of what the CLI did with each.

Every case builds its inputs in a fresh folder, runs ``mechscope.apps.cli.main(argv)`` in-process
(a timer turns a hang into an outcome) and is classed as

* ``clear``: exit code 2, at most `MAX_LINES` lines on stderr, one of the case's names of the
  input in the message, and every file that existed before (the case's folder and the shared
  fixtures) byte-identical afterwards with no new file;
* ``vague``: exit code 2 but too many lines, the input not named, or files changed;
* ``traceback``: an exception escaped ``main``;
* ``silent``: exit code 0 (the bad input was accepted);
* ``hang``: still running after `TIMEOUT_S` seconds.

``python tests/apps/bad_inputs.py`` runs the whole table and prints the counts (the tally of
issue 18); ``tests/apps/test_bad_inputs.py`` asserts ``clear`` for every case.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINES = 4
TIMEOUT_S = 60.0
TINY = "attn-only-induction"  # the smallest zoo model (2 attention-only layers, d_model 64, n_ctx 128)


@dataclass
class Ctx:
    """Shared fixtures (built once, never written by a case) and the case's own folder."""

    shared: Path
    tmp: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def text(self) -> Path:
        return self.shared / "text.txt"

    def train_args(self, *overrides: str, out: str | None = None, text: Path | None = None) -> list[str]:
        cfg = self.tmp / "job.toml"
        if not cfg.exists():
            cfg.write_text("[sae]\nd_dict = 16\n")
        t = text or self.text
        base = [f'data.model="{TINY}"', f'data.text="{t}"', f'data.heldout_text="{self.text}"',
                "data.n_ctx=16", "data.batch_tokens=32", "data.shuffle_buffer=0", "data.eval_windows=2",
                "data.model_batch_size=2", 'sae.site_in="L1.resid_pre"', "sae.k=2", "sae.steps=2",
                "sae.progress=false"]
        return ["train", str(cfg), *base, *overrides, "--out", out or str(self.tmp / "out")]

    def file(self, name: str, data: "str | bytes") -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p


def build_shared(folder: Path) -> Path:
    """Fixtures every case may read: a text file, a trained run (for resume cases), a dictionary
    folder for the tiny model, an HF GPT-2 checkpoint folder."""
    from mechscope.apps.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.txt").write_text("abcdefg hijklmn opqrstu vwxyz. " * 40)
    ctx = Ctx(folder, folder / "scratch")
    ctx.tmp.mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(ctx.train_args(out=str(folder / "trained"))) == 0
    shutil.rmtree(ctx.tmp)
    _hf_folder(folder / "hf")
    return folder


def _hf_folder(path: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from mechscope.interp import zoo

    tok = PreTrainedTokenizerFast(tokenizer_file=str(zoo.model_dir(TINY) / "tokenizer.json"), bos_token="<|bos|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def _copy(ctx: Ctx, name: str) -> Path:
    dst = ctx.tmp / name
    shutil.copytree(ctx.shared / name, dst)
    return dst


def _hold_lock(ctx: Ctx, out: Path) -> None:
    """Another writer: a process that holds the output folder's lock (flock on its own file
    description conflicts with ours even in one process)."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".mechscope.lock", "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ctx.cleanups.append(f.close)


def _truncated_hf(ctx: Ctx) -> str:
    d = _copy(ctx, "hf")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return str(d)


def _nan_hf(ctx: Ctx) -> str:
    from safetensors.torch import load_file, save_file

    d = _copy(ctx, "hf")
    t = load_file(str(d / "model.safetensors"))
    key = next(k for k in t if k.endswith("c_attn.weight"))
    t[key][0, 0] = float("nan")
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    return str(d)


def _hf_with_config(ctx: Ctx, text: str) -> str:
    d = _copy(ctx, "hf")
    (d / "config.json").write_text(text)
    return str(d)


_GPT2_NO_KEYS = '{"architectures": ["GPT2LMHeadModel"]}'


def _existing_cache(ctx: Ctx) -> str:
    out = ctx.tmp / "cache"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "mechscope-activation-cache"}')
    return str(out)


def _prompts(ctx: Ctx, data: "str | bytes") -> str:
    return str(ctx.file("prompts.txt", data))


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    named: tuple[str, ...]  # any one of these must appear in stderr ("{tmp}" is the case folder)


def _sae_dir(ctx: Ctx) -> str:
    return str(ctx.shared / "trained" / "runs" / "run000" / "dictionary")


CASES: tuple[Case, ...] = (
    # --- train: config values -------------------------------------------------------------------
    Case("train-k-word", lambda c: c.train_args("sae.k=abc"), ("sae.k",)),
    Case("train-k-float", lambda c: c.train_args("sae.k=4.5"), ("sae.k",)),
    Case("train-text-int", lambda c: c.train_args("data.text=5"), ("data.text",)),
    Case("train-nctx-zero", lambda c: c.train_args("data.n_ctx=0"), ("data.n_ctx",)),
    Case("train-nctx-over-model", lambda c: c.train_args("data.n_ctx=4096"), ("data.n_ctx",)),
    Case("train-unknown-field", lambda c: c.train_args("sae.bogus=1"), ("bogus",)),
    Case("train-bad-override", lambda c: c.train_args("model=1"), ("model=1",)),
    Case("train-arch", lambda c: c.train_args('sae.architecture="dense"'), ("architecture",)),
    Case("train-site", lambda c: c.train_args('sae.site_in="L9.resid_pre"'), ("L9",)),
    Case("train-lr-inf", lambda c: c.train_args("sae.lr=inf"), ("lr",)),
    Case("train-lr-nan", lambda c: c.train_args("sae.lr=nan"), ("lr",)),
    Case("train-l1-inf", lambda c: c.train_args('sae.architecture="relu"', "sae.l1_coeff=inf"), ("l1_coeff",)),
    Case("train-d-dict-huge", lambda c: c.train_args("sae.d_dict=10000000000"), ("d_dict",)),
    Case("train-d-dict-float", lambda c: c.train_args("sae.d_dict=1e9"), ("d_dict",)),
    Case("train-sweep-path", lambda c: c.train_args('sae.wandb_project=["../../../x", "y"]'), ("wandb_project",)),
    # --- train: files --------------------------------------------------------------------------
    Case("train-config-missing", lambda c: ["train", str(c.tmp / "none.toml"), "--out", str(c.tmp / "o")], ("none.toml",)),
    Case("train-config-folder", lambda c: ["train", str(c.tmp), "--out", str(c.tmp / "o")], ("{tmp}",)),
    Case("train-config-toml", lambda c: ["train", str(c.file("j.toml", "[sae\n")), "--out", str(c.tmp / "o")], ("j.toml",)),
    Case("train-config-utf8", lambda c: ["train", str(c.file("j.toml", b"[sae]\nd_dict = 8 # \xff\n")),
                                         "--out", str(c.tmp / "o")], ("j.toml",)),
    Case("train-config-table", lambda c: ["train", str(c.file("j.toml", "[model]\nx=1\n")), "--out", str(c.tmp / "o")], ("model",)),
    Case("train-text-missing", lambda c: c.train_args(text=c.tmp / "nope.txt"), ("nope.txt",)),
    Case("train-text-empty", lambda c: c.train_args(text=c.file("empty.txt", "")), ("empty.txt",)),
    Case("train-text-blank", lambda c: c.train_args(text=c.file("blank.txt", "\n\n  \n")), ("blank.txt",)),
    Case("train-text-utf8", lambda c: c.train_args(text=c.file("latin1.txt", "caf\xe9 ".encode("latin-1") * 50)), ("latin1.txt",)),
    Case("train-text-memmap-missing", lambda c: c.train_args(text=c.tmp / "ids.npy"), ("ids.npy",)),
    Case("train-out-file", lambda c: c.train_args(out=str(c.file("outfile", "x"))), ("outfile",)),
    Case("train-out-unwritable", lambda c: c.train_args(out="/proc/mechscope-x"), ("/proc/mechscope-x",)),
    Case("train-model-missing", lambda c: c.train_args(f'data.model="{c.tmp / "nomodel"}"'), ("nomodel",)),
    Case("train-model-truncated", lambda c: c.train_args(f'data.model="{_truncated_hf(c)}"'), ("model.safetensors",)),
    Case("train-model-config-json", lambda c: c.train_args(f'data.model="{_hf_with_config(c, "{")}"'), ("config.json",)),
    Case("train-model-config-keys", lambda c: c.train_args(f'data.model="{_hf_with_config(c, _GPT2_NO_KEYS)}"'),
         ("config.json",)),
    Case("train-model-nan", lambda c: c.train_args(f'data.model="{_nan_hf(c)}"'), ("non-finite", "NaN")),
    Case("train-resume-other-config", lambda c: c.train_args("sae.k=3", out=str(_copy(c, "trained"))), ("--no-resume",)),
    Case("train-second-writer", lambda c: (_hold_lock(c, c.tmp / "out"), c.train_args())[1], ("another",)),
    # --- cache ---------------------------------------------------------------------------------
    Case("cache-tokens-zero", lambda c: ["cache", "--model", TINY, "--sites", "L1.resid_pre", "--text", str(c.text),
                                         "--tokens", "0", "--out", str(c.tmp / "c")], ("--tokens",)),
    Case("cache-nctx-one", lambda c: ["cache", "--model", TINY, "--sites", "L1.resid_pre", "--text", str(c.text),
                                      "--tokens", "64", "--n-ctx", "1", "--out", str(c.tmp / "c")], ("--n-ctx",)),
    Case("cache-nctx-over-model", lambda c: ["cache", "--model", TINY, "--sites", "L1.resid_pre", "--text", str(c.text),
                                             "--tokens", "64", "--n-ctx", "4096", "--out", str(c.tmp / "c")], ("--n-ctx",)),
    Case("cache-site", lambda c: ["cache", "--model", TINY, "--sites", "L7.resid_pre", "--text", str(c.text),
                                  "--tokens", "64", "--out", str(c.tmp / "c")], ("L7",)),
    Case("cache-text-empty", lambda c: ["cache", "--model", TINY, "--sites", "L1.resid_pre", "--text",
                                        str(c.file("empty.txt", "")), "--tokens", "64", "--n-ctx", "16",
                                        "--out", str(c.tmp / "c")], ("empty.txt",)),
    Case("cache-text-missing", lambda c: ["cache", "--model", TINY, "--sites", "L1.resid_pre", "--text",
                                          str(c.tmp / "nope.txt"), "--tokens", "64", "--out", str(c.tmp / "c")], ("nope.txt",)),
    Case("cache-exists", lambda c: ["cache", "--model", TINY, "--sites", "L1.resid_pre", "--text", str(c.text),
                                    "--tokens", "64", "--n-ctx", "16", "--out", _existing_cache(c)], ("--overwrite",)),
    Case("cache-out-file", lambda c: ["cache", "--model", TINY, "--sites", "L1.resid_pre", "--text", str(c.text),
                                      "--tokens", "64", "--n-ctx", "16", "--out", str(c.file("cfile", "x"))], ("cfile",)),
    Case("cache-second-writer", lambda c: (_hold_lock(c, c.tmp / "c"), [
        "cache", "--model", TINY, "--sites", "L1.resid_pre", "--text", str(c.text), "--tokens", "64",
        "--n-ctx", "16", "--out", str(c.tmp / "c")])[1], ("another",)),
    # --- features ------------------------------------------------------------------------------
    Case("features-missing-dir", lambda c: ["features", str(c.tmp / "nosae"), "--out", str(c.tmp / "fb")], ("nosae",)),
    Case("features-out-unwritable", lambda c: ["features", _sae_dir(c), "--model", TINY, "--text", str(c.text),
                                               "--tokens", "64", "--n-ctx", "16", "--out", "/proc/mechscope-x"],
         ("/proc/mechscope-x",)),
    Case("features-out-file", lambda c: ["features", _sae_dir(c), "--model", TINY, "--text", str(c.text),
                                         "--tokens", "64", "--n-ctx", "16", "--out", str(c.file("ffile", "x"))], ("ffile",)),
    Case("features-tokens-zero", lambda c: ["features", _sae_dir(c), "--model", TINY, "--text", str(c.text),
                                            "--tokens", "0", "--n-ctx", "16", "--out", str(c.tmp / "fb")], ("--tokens",)),
    Case("features-nctx-one", lambda c: ["features", _sae_dir(c), "--model", TINY, "--text", str(c.text),
                                         "--tokens", "64", "--n-ctx", "1", "--out", str(c.tmp / "fb")], ("--n-ctx",)),
    Case("features-text-empty", lambda c: ["features", _sae_dir(c), "--model", TINY, "--text",
                                           str(c.file("empty.txt", "")), "--tokens", "64", "--n-ctx", "16",
                                           "--out", str(c.tmp / "fb")], ("empty.txt",)),
    Case("features-wrong-model", lambda c: ["features", _sae_dir(c), "--model", "gpt2-shakespeare", "--text", str(c.text),
                                            "--tokens", "64", "--n-ctx", "16", "--out", str(c.tmp / "fb")], ("d_in", "width")),
    Case("features-sae-meta-json", lambda c: ["features", (lambda d: ((d / "mechscope.json").write_text("{"), str(d))[1])(
        _copy_sae(c)), "--model", TINY, "--out", str(c.tmp / "fb")], ("mechscope.json",)),
    Case("features-sae-nan", lambda c: ["features", _nan_sae(c), "--model", TINY, "--text", str(c.text),
                                        "--tokens", "64", "--n-ctx", "16", "--out", str(c.tmp / "fb")], ("W_dec",)),
    # --- prompts (routes / trace-attention / trace) --------------------------------------------
    Case("routes-prompts-missing", lambda c: ["routes", "--model", TINY, "--prompts", str(c.tmp / "p.txt"),
                                              "--out", str(c.tmp / "g.json")], ("p.txt",)),
    Case("routes-prompts-empty", lambda c: ["routes", "--model", TINY, "--prompts", _prompts(c, "\n \n"),
                                            "--out", str(c.tmp / "g.json")], ("prompts.txt",)),
    Case("routes-prompts-utf8", lambda c: ["routes", "--model", TINY, "--prompts", _prompts(c, b"ab\xffcd\n"),
                                           "--out", str(c.tmp / "g.json")], ("prompts.txt",)),
    Case("routes-prompts-folder", lambda c: ["routes", "--model", TINY, "--prompts", str(c.tmp),
                                             "--out", str(c.tmp / "g.json")], ("{tmp}",)),
    Case("routes-prompt-too-long", lambda c: ["routes", "--model", TINY, "--prompts", _prompts(c, "abcd" * 100 + "\n"),
                                              "--out", str(c.tmp / "g.json")], ("128",)),
    Case("routes-out-folder", lambda c: ["routes", "--model", TINY, "--prompts", _prompts(c, "abcabc\n"),
                                         "--out", str(c.tmp)], ("{tmp}",)),
    Case("attention-heads", lambda c: ["trace-attention", "--model", TINY, "--prompts", _prompts(c, "abcabc\n"),
                                       "--heads", "L9H0", "--out", str(c.tmp / "g.json")], ("L9H0",)),
    Case("attention-prompt-too-long", lambda c: ["trace-attention", "--model", TINY, "--prompts",
                                                 _prompts(c, "abcd" * 100 + "\n"), "--heads", "L1H0",
                                                 "--out", str(c.tmp / "g.json")], ("128",)),
    Case("trace-prompts-utf8", lambda c: ["trace", "--model", TINY, "--prompts", _prompts(c, b"ab\xffcd\n"),
                                          "--out", str(c.tmp / "g.json")], ("prompts.txt",)),
    Case("trace-prompt-too-long", lambda c: ["trace", "--model", TINY, "--prompts", _prompts(c, "abcd" * 100 + "\n"),
                                             "--sites", "L0.z", "--out", str(c.tmp / "g.json")], ("128",)),
    # --- codebook / zoo ------------------------------------------------------------------------
    Case("codebook-config-missing", lambda c: ["codebook", "train", str(c.tmp / "cb.toml"), "--out", str(c.tmp / "o")], ("cb.toml",)),
    Case("codebook-config-toml", lambda c: ["codebook", "train", str(c.file("cb.toml", "[x\n")), "--out", str(c.tmp / "o")], ("cb.toml",)),
    Case("codebook-config-utf8", lambda c: ["codebook", "train", str(c.file("cb.toml", b"# \xff\n")), "--out", str(c.tmp / "o")], ("cb.toml",)),
    Case("codebook-find-missing", lambda c: ["codebook", "find", str(c.tmp / "nocb"), "--tokens", "1 2 3"], ("nocb",)),
    Case("zoo-show-unknown", lambda c: ["zoo", "show", "no-such-model"], ("no-such-model",)),
)


def _copy_sae(ctx: Ctx) -> Path:
    dst = ctx.tmp / "sae"
    shutil.copytree(_sae_dir(ctx), dst)
    return dst


def _nan_sae(ctx: Ctx) -> str:
    import torch
    from safetensors.torch import load_file, save_file

    d = _copy_sae(ctx)
    w = d / "sae_weights.safetensors"
    t = load_file(str(w))
    t["W_dec"][0, 0] = torch.nan
    save_file(t, str(w))
    return str(d)


def snapshot(*roots: Path) -> dict[str, bytes]:
    out = {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = Path(dirpath) / n
                if p.is_file() and not p.is_symlink():
                    out[str(p)] = p.read_bytes()
    return out


class _Hang(BaseException):
    pass


@dataclass(frozen=True)
class Outcome:
    kind: str  # clear | vague | traceback | silent | hang
    rc: int | None
    stderr: str
    why: str = ""


def run_case(case: Case, shared: Path, tmp: Path, timeout: float = TIMEOUT_S) -> Outcome:
    """Run one case in ``tmp`` (created empty) and class what the CLI did."""
    from mechscope.apps.cli import main

    tmp.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(shared, tmp)
    err, out = io.StringIO(), io.StringIO()
    try:
        argv = case.argv(ctx)
        before = snapshot(shared, tmp)
        rc, raised = _call(main, argv, err, out, timeout)
    finally:
        for f in ctx.cleanups:
            f()
    after = snapshot(shared, tmp)
    text = err.getvalue()
    if raised == "hang":
        return Outcome("hang", None, text)
    if raised:
        return Outcome("traceback", None, text + raised)
    if rc == 0:
        return Outcome("silent", rc, text, "exit code 0")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    names = [n.replace("{tmp}", str(tmp)) for n in case.named]
    changed = sorted(k for k in before if after.get(k) != before[k]) + sorted(set(after) - set(before))
    why = []
    if rc != 2:
        why.append(f"exit code {rc}")
    if len(lines) > MAX_LINES:
        why.append(f"{len(lines)} lines on stderr")
    if not any(n in text for n in names):
        why.append(f"stderr names none of {names}")
    if changed:
        why.append(f"files changed or added: {[os.path.relpath(p, tmp.parent) for p in changed][:4]}")
    return Outcome("vague" if why else "clear", rc, text, "; ".join(why))


def _call(main: Callable, argv: list[str], err: io.StringIO, out: io.StringIO,
          timeout: float) -> tuple[int | None, str]:
    timed = threading.current_thread() is threading.main_thread()
    if timed:
        def on_alarm(*_):
            raise _Hang()
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                return int(main(argv)), ""
            except SystemExit as e:
                return (e.code if isinstance(e.code, int) else 1), ""
    except _Hang:
        return None, "hang"
    except BaseException:  # noqa: BLE001 - the point is to see what escaped
        return None, traceback.format_exc(limit=-3)
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def tally(work: Path, only: "set[str] | None" = None, timeout: float = TIMEOUT_S) -> dict[str, list[str]]:
    shared = build_shared(work / "shared")
    counts: dict[str, list[str]] = {k: [] for k in ("clear", "vague", "traceback", "silent", "hang")}
    for case in CASES:
        if only and case.id not in only:
            continue
        o = run_case(case, shared, work / case.id, timeout)
        counts[o.kind].append(case.id)
        detail = o.why or (o.stderr.strip().splitlines() or [""])[-1]
        print(f"{o.kind:9s} {case.id:28s} {detail[:150]}", flush=True)
    return counts


if __name__ == "__main__":
    import tempfile

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as d:
        res = tally(Path(d), set(sys.argv[1:]) or None, float(os.environ.get("BAD_INPUTS_TIMEOUT", TIMEOUT_S)))
    n = sum(map(len, res.values()))
    print(f"tried {n}: " + ", ".join(f"{k} {len(v)}" for k, v in res.items()))
