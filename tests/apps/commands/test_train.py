"""Training jobs on a language model: config validation, splicing metrics, end-to-end runs."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.kernels.code import SparseCode
from mechscope.apps.commands.train import load_job, parse_override, run_job
from mechscope.sae.splice_eval import spliced_metrics


class Exact:
    """A dictionary whose reconstruction is exact (identity atoms, all latents active)."""

    def __init__(self, d: int, scale: float = 1.0) -> None:
        self.d_in = self.d_dict = d
        self.scale = scale

    def encode(self, x):
        return SparseCode(x, torch.arange(self.d_in).expand_as(x).contiguous())

    def decode(self, code):
        return self.scale * code.dense(self.d_dict)

    @property
    def directions(self):
        return self.scale * torch.eye(self.d_in)


def test_spliced_metrics_oracles(tiny_gpt2, tokens):
    windows = list(tokens)
    perfect = spliced_metrics(tiny_gpt2, Exact(32), "L1.resid_mid", windows, site_out="L1.resid_mid")
    assert perfect.ce_loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert perfect.kl == pytest.approx(0.0, abs=1e-6)
    assert perfect.loss_spliced == pytest.approx(perfect.loss_clean, abs=1e-5)
    zero = spliced_metrics(tiny_gpt2, Exact(32, scale=0.0), "L1.attn_out", windows)
    assert zero.ce_loss_recovered == pytest.approx(0.0, abs=1e-5)
    assert zero.loss_spliced == pytest.approx(zero.loss_zero, abs=1e-5)
    # a transcoder in -> out: an exact map from mlp_in is not the MLP, so it differs from clean
    tc = spliced_metrics(tiny_gpt2, Exact(32), "L1.mlp_in", windows, site_out="L1.mlp_out")
    assert tc.kl > 0


@pytest.mark.parametrize("overrides, message", [
    (["data.n_ctx=0"], "data.n_ctx"),
    (["sae.architecture=\"dense\""], "architecture"),
    (["sae.k=0"], "field sae.k"),
    (["sae.bogus=1"], "unknown config field"),
    (["data.bogus=1"], "unknown config field"),
    (["data.text=\"zoo:test\""], "data.text"),
    (["data.text=\"/no/such/file.txt\""], "data.text"),
    (["model=1"], "data.FIELD=VALUE"),
])
def test_bad_configs_rejected_naming_the_field(overrides, message):
    base = ["sae.d_dict=64", "sae.site_in=\"L0.resid_post\""]
    with pytest.raises(ValueError, match=message):
        load_job(None, base + overrides)


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[data]\nn_ctx = 16\n[sae]\nd_dict = 64\nk = [2, 4]\nsite_in = "L0.resid_post"\n')
    job = load_job(path, ["sae.lr=1e-3"])
    assert job.data.n_ctx == 16 and [c.dictionary.k for c in job.configs] == [2, 4]
    assert all(c.train.lr == 1e-3 for c in job.configs)
    assert parse_override("data.model=gpt2") == ("data", "model", "gpt2")
    (tmp_path / "bad.toml").write_text("[data\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_job(tmp_path / "bad.toml")
    (tmp_path / "extra.toml").write_text("[model]\nx = 1\n")
    with pytest.raises(ValueError, match="valid tables: data, sae"):
        load_job(tmp_path / "extra.toml")


def test_run_job_sweep_end_to_end(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    overrides = [
        'data.model="attn-only-induction"', f'data.text="{text}"', f'data.heldout_text="{text}"',
        "data.n_ctx=32", "data.batch_tokens=128", "data.shuffle_buffer=512", "data.eval_windows=4",
        'sae.site_in="L1.resid_pre"', "sae.d_dict=64", "sae.k=[2,4]", "sae.steps=4", "sae.log_every=1",
    ]
    rows = [r.row() for r in run_job(load_job(None, overrides), tmp_path / "out", progress=False)]
    assert [r["k"] for r in rows] == [2, 4]
    for r in rows:
        assert r["eval_l0"] <= r["k"] + 1e-6 and 0 <= r["eval_fvu"]
        assert {"eval_ce_loss_recovered", "eval_kl", "eval_loss_clean"} <= set(r)
        sl_meta = json.loads((tmp_path / "out" / "runs" / r["run"] / "dictionary" / "cfg.json").read_text())["metadata"]
        assert (sl_meta["model_name"], sl_meta["hook_name"], sl_meta["context_size"]) == (
            "attn-only-induction", "blocks.1.hook_resid_pre", 32)
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [t["run"] for t in table] == [r["run"] for r in rows]


def test_example_configs_validate():
    from pathlib import Path

    from mechscope.apps.commands.codebook import load_config

    configs = sorted((Path(__file__).parents[3] / "examples" / "configs").glob("*.toml"))
    assert configs
    for path in configs:  # codebook_*.toml are `mechscope codebook train` jobs, the rest `mechscope train`
        assert (load_config(path) if path.name.startswith("codebook") else load_job(path).configs), path


def test_resume_through_a_real_activation_stream_is_exact(tmp_path, tiny_gpt2):
    """A crash mid-run, then resume: the shuffled activation stream (buffer, RNG, token position)
    is restored from the checkpoint, so the weights equal those of an uninterrupted run."""
    from mechscope.interp.stream import ActivationStream
    from mechscope.interp.token_memmap import MemmapTokenStream, write_token_memmap
    from mechscope.sae.config import RunConfig
    from mechscope.sae.trainer import train

    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 100, (int(n),), generator=gen).tolist() for n in torch.randint(20, 60, (30,), generator=gen)]
    ids = write_token_memmap(tmp_path / "ids.npy", docs, sep_id=0, bos_id=0)

    def stream():
        windows = MemmapTokenStream(ids, 16, shuffle=True, seed=1, epochs=None)
        return ActivationStream(tiny_gpt2, windows, "L1.resid_mid", batch_tokens=64,
                                model_batch_size=4, shuffle_buffer=256, seed=3, drop_last=True)

    class Crash:
        def __init__(self, source, after):
            self.source, self.after = source, after

        def __iter__(self):
            for i, batch in enumerate(self.source):
                if i == self.after:
                    raise KeyboardInterrupt("simulated crash")
                yield batch

        def state_dict(self):
            return self.source.state_dict()

    cfg = RunConfig.from_dict(dict(d_in=32, d_dict=64, k=4, steps=9, checkpoint_every=3, log_every=3,
                                   progress=False, site_in="L1.resid_mid"))
    full = train(cfg, stream(), tmp_path / "full", resume=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, Crash(stream(), after=5), tmp_path / "cut")
    resumed = train(cfg, stream(), tmp_path / "cut")
    assert resumed.resumed_from == 3
    a, b = full.dictionary.state_dict(), resumed.dictionary.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_swept_strings_never_name_a_path_outside_the_sweep(tmp_path):
    from mechscope.sae.config import expand_sweep
    from mechscope.sae.sweep import run_names

    values = ["../../../x", "a/b\\c", "..", "ok-name_1.2", "x" * 80]
    names = run_names(expand_sweep({"d_in": 4, "d_dict": 8, "k": 2, "wandb_project": values}))
    runs = (tmp_path / "runs").resolve()
    assert len(set(names)) == len(values)
    for name in names:
        assert "/" not in name and "\\" not in name and ".." not in name and len(name) < 80
        assert (runs / name).resolve().parent == runs
    assert names[3] == "run003_wandb_project=ok-name_1.2"  # safe values are kept as they are


def test_a_rejected_resume_leaves_the_folder_as_it_was(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    base = ['data.model="attn-only-induction"', f'data.text="{text}"', f'data.heldout_text="{text}"',
            "data.n_ctx=16", "data.batch_tokens=32", "data.shuffle_buffer=0", "data.eval_windows=2",
            'sae.site_in="L1.resid_pre"', "sae.d_dict=16", "sae.k=2", "sae.steps=2"]
    out = tmp_path / "out"
    run_job(load_job(None, base), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"other settings \(k\); pass --no-resume to start over"):
        run_job(load_job(None, [*base, "sae.k=3"]), out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    rows = run_job(load_job(None, [*base, "sae.k=3"]), out, resume=False, progress=False)
    assert len(rows) == 1 and json.loads((out / "job.json").read_text())["sae"]["k"] == 3


def test_wandb_without_a_login_is_refused_before_work(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no machine api.wandb.ai
    base = ["sae.d_dict=64", 'sae.site_in="L0.resid_post"']
    with pytest.raises(ValueError, match="sae.wandb_project='proj' needs a Weights & Biases login"):
        load_job(None, [*base, 'sae.wandb_project="proj"'])
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert load_job(None, [*base, 'sae.wandb_project="proj"']).configs[0].train.wandb_project == "proj"
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ValueError, match="cannot contain"):
        load_job(None, [*base, 'sae.wandb_project=["ok", "../x"]'])
