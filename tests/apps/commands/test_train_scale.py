"""Training jobs at scale: from an activation cache (no model), several sites from one forward,
device flags. The multi-process (torchrun / gloo) tests are in test_distributed.py."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.apps.commands.train import load_job, run_job

MODEL = "attn-only-induction"
SITES = ["L0.resid_pre", "L0.resid_post", "L1.resid_pre", "L1.resid_post"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    return path


@pytest.fixture(scope="module")
def cache(text, tmp_path_factory):
    from mechscope.interp.tokens import open_token_stream
    from mechscope.interp.cache import build_cache
    from mechscope.interp.models import load_model

    model = load_model(MODEL)
    out = tmp_path_factory.mktemp("cache") / "acts"
    return build_cache(model, open_token_stream(str(text), 32, model, epochs=None), SITES, out, 2048,
                       rows_per_shard=512, model_batch_size=8)


def _job(text, *extra):
    return load_job(None, [f'data.model="{MODEL}"', f'data.text="{text}"', f'data.heldout_text="{text}"',
                           "data.n_ctx=32", "data.batch_tokens=128", "data.shuffle_buffer=512",
                           "data.eval_windows=2", 'data.device="cpu"', "sae.d_dict=64", "sae.k=4",
                           "sae.steps=6", "sae.log_every=1", *extra])


def _weights(result):
    from mechscope.sae.io import load_dictionary

    return load_dictionary(result.path / "dictionary").state_dict()


def test_four_site_sweep_from_a_cache_without_a_model(cache, text, tmp_path, monkeypatch):
    import mechscope.interp.models as models

    def no_model(*a, **k):
        raise AssertionError("a cache job must not load a model")

    monkeypatch.setattr(models, "load_model", no_model)
    sites = json.dumps(SITES)
    job = _job(text, f'data.activations="{cache}"', f"sae.site_in={sites}", "sae.k=[2,4]")
    results = run_job(job, tmp_path / "out", progress=False)
    assert [(r.config.dictionary.site_in, r.config.dictionary.k) for r in results] == [
        (s, k) for s in SITES for k in (2, 4)]
    assert all(r.eval is None and r.train.step == 6 for r in results)
    assert all(r.config.dictionary.d_in == 64 for r in results)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["site_in"] for r in rows] == [s for s in SITES for _ in (2, 4)]
    assert len({r.path for r in results}) == 8 and all((r.path / "metrics.jsonl").exists() for r in results)


def test_cache_sites_and_widths_are_checked_against_the_manifest(cache, text, tmp_path):
    with pytest.raises(ValueError, match="not in cache .*cached sites: L0.resid_pre"):
        run_job(_job(text, f'data.activations="{cache}"', 'sae.site_in="L1.mlp_out"'), tmp_path / "a")
    with pytest.raises(ValueError, match="sae.d_in=32 but site L0.resid_pre has width 64"):
        run_job(_job(text, f'data.activations="{cache}"', 'sae.site_in="L0.resid_pre"', "sae.d_in=32"),
                tmp_path / "b")
    with pytest.raises(ValueError, match="not an activation cache folder"):
        _job(text, f'data.activations="{tmp_path}"', 'sae.site_in="L0.resid_pre"')


def test_cache_job_resumes_bitwise_with_the_stream_position(cache, text, tmp_path, monkeypatch):
    import mechscope.sae.trainer as trainer

    args = [f'data.activations="{cache}"', 'sae.site_in="L1.resid_post"', "sae.checkpoint_every=3",
            "sae.steps=8"]
    full = run_job(_job(text, *args), tmp_path / "full", progress=False)
    real = trainer.train_step

    def crash_at_5(run, x_in, x_out, step, dp=None):
        if step == 5:
            raise KeyboardInterrupt("killed")
        return real(run, x_in, x_out, step, dp)

    monkeypatch.setattr(trainer, "train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        run_job(_job(text, *args), tmp_path / "cut", progress=False)
    monkeypatch.setattr(trainer, "train_step", real)
    resumed = run_job(_job(text, *args), tmp_path / "cut", progress=False)
    a, b = _weights(full[0]), _weights(resumed[0])
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = resumed[0].path / "metrics.jsonl"
    assert [json.loads(s)["step"] for s in lines.read_text().splitlines()] == list(range(1, 9))


def test_multi_site_sweep_equals_each_site_alone(text, tmp_path):
    """One forward feeds dictionaries at two sites; each ends bitwise where the same config
    trained on that site alone ends (same rows, same shuffle, own weights and generator)."""
    both = run_job(_job(text, 'sae.site_in=["L0.resid_post", "L1.resid_post"]'), tmp_path / "both", progress=False)
    for r in both:
        alone = run_job(_job(text, f'sae.site_in="{r.config.dictionary.site_in}"'),
                        tmp_path / r.config.dictionary.site_in, progress=False)[0]
        a, b = _weights(r), _weights(alone)
        assert all(torch.equal(a[k], b[k]) for k in a), r.name
        assert r.eval.reconstruction.fvu == alone.eval.reconstruction.fvu


def test_cache_and_train_commands_take_device_dtype_and_shard_flags(text, tmp_path, capsys):
    from mechscope.apps.cli import main

    out = tmp_path / "acts"
    assert main(["cache", "--model", MODEL, "--sites", "L0.resid_post", "--text", str(text), "--tokens", "300",
                 "--n-ctx", "32", "--rows-per-shard", "128", "--batch-size", "4", "--device", "cpu",
                 "--dtype", "bfloat16", "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["dtype"] == "bfloat16" and [s["rows"] for s in m["shards"]] == [128, 128, 44]
    job = tmp_path / "job.toml"
    job.write_text(f'[data]\nactivations = "{out}"\nbatch_tokens = 64\nshuffle_buffer = 128\n'
                   '[sae]\nsite_in = "L0.resid_post"\nd_dict = 32\nk = 2\nsteps = 3\nprogress = false\n')
    assert main(["train", str(job), "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "job.json").read_text())["data"]["device"] == "cpu"
    assert main(["train", str(job), "--device", "gpu", "--out", str(tmp_path / "run")]) == 2
    assert "data.device: device 'gpu' is invalid" in capsys.readouterr().err
