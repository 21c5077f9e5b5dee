"""torchrun on the CPU (gloo, 2 processes): a data-parallel dictionary equals the one-process run
on the same global batches, a sharded sweep equals the sequential sweep, a killed rank stops the
job and a rerun resumes (with 2 processes, or with 1: the data-parallel checkpoint does not
depend on the number of processes); a sharded sweep's rank checkpoints refuse another world size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mechscope.apps.commands.train import load_job, run_job

from .test_train_scale import cache, text  # noqa: F401 - shared fixtures

KILL_RANK_1 = '''
import os, sys
import mechscope.sae.trainer as t
real = t.train_step
def dies(run, x_in, x_out, step, dp=None):
    if step == 5 and os.environ["RANK"] == "1":
        os._exit(7)
    return real(run, x_in, x_out, step, dp)
t.train_step = dies
from mechscope.apps.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _job_file(path, cache_dir, k="4"):
    path.write_text(f'[data]\nactivations = "{cache_dir}"\nbatch_tokens = 128\nshuffle_buffer = 512\n'
                    'device = "cpu"\n[sae]\nsite_in = "L1.resid_post"\nd_dict = 64\n'
                    f'k = {k}\nsteps = 8\ncheckpoint_every = 3\nlog_every = 1\ndead_tokens = 1000000000\n'
                    'progress = false\n')
    return path


def _torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _weights(folder):
    from mechscope.sae.io import load_dictionary

    return load_dictionary(folder / "dictionary").state_dict()


def _close(a, b, rtol=1e-5):
    for k in a:
        if a[k].is_floating_point():
            scale = a[k].abs().max().clamp_min(1e-12)
            assert float((a[k] - b[k]).abs().max() / scale) <= rtol, k
        else:
            assert torch.equal(a[k], b[k]), k


def test_data_parallel_equals_one_process_and_a_killed_rank_resumes(cache, tmp_path):  # noqa: F811
    job = _job_file(tmp_path / "job.toml", cache)
    one = run_job(load_job(job), tmp_path / "one", progress=False)[0]
    done = _torchrun("-m", "mechscope.apps", "train", str(job), "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "two" / "runs" / one.name
    _close(_weights(one.path), _weights(run))
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == list(range(1, 9))  # written once, by rank 0
    ref = [json.loads(s) for s in (one.path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] == pytest.approx(ref[-1]["loss"], rel=1e-4)
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    killed = _torchrun(str(script), "train", str(job), "--out", str(tmp_path / "cut"))
    assert killed.returncode != 0  # the job stops (torchrun ends the surviving rank), no hang
    assert not (tmp_path / "cut" / "runs" / one.name / "dictionary").exists()
    shutil.copytree(tmp_path / "cut", tmp_path / "cut1")
    again = _torchrun("-m", "mechscope.apps", "train", str(job), "--out", str(tmp_path / "cut"))
    assert again.returncode == 0, again.stderr[-3000:]
    _close(_weights(run), _weights(tmp_path / "cut" / "runs" / one.name), rtol=0)  # resumed at step 3: bitwise
    # the 2-process checkpoint (step 3) resumed by 1 process: the 1-process run
    from mechscope.sae.checkpoint import read_checkpoint

    meta = read_checkpoint(tmp_path / "cut1" / "checkpoint.safetensors")[0]
    assert (meta["step"], meta["world_size"]) == (3, 2)
    alone = run_job(load_job(job), tmp_path / "cut1", progress=False)[0]
    _close(_weights(one.path), _weights(alone.path))


def test_sharded_sweep_equals_the_sequential_sweep(cache, tmp_path):  # noqa: F811
    job = _job_file(tmp_path / "job.toml", cache, k="[2, 4, 8]")
    seq = run_job(load_job(job), tmp_path / "seq", progress=False)
    done = _torchrun("-m", "mechscope.apps", "train", str(job), "--out", str(tmp_path / "par"))
    assert done.returncode == 0, done.stderr[-3000:]
    for r in seq:
        _close(_weights(r.path), _weights(tmp_path / "par" / "runs" / r.name), rtol=0)
    rows = json.loads((tmp_path / "par" / "results.json").read_text())
    assert [(x["run"], x["k"], x["step"]) for x in rows] == [(r.name, r.config.dictionary.k, 8) for r in seq]
    assert sorted(p.name for p in (tmp_path / "par").glob("checkpoint*")) == [
        "checkpoint.rank0.safetensors", "checkpoint.rank1.safetensors"]
    # rank checkpoints hold different runs: another number of processes is refused with the reason
    with pytest.raises(ValueError, match="sharded over 2 processes .* resume with torchrun --nproc_per_node 2"):
        run_job(load_job(job), tmp_path / "par", progress=False)
