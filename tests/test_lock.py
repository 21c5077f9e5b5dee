"""One writer per output folder (`mechscope.lock`): a second process is refused at once, a killed
holder leaves no stale lock, and orphan temporaries of `mechscope.files` are cleaned by the next writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mechscope import files
from mechscope.lock import LOCK_NAME, FolderBusyError, clean_orphans, folder_lock, writable_dir

HOLD = """
import sys, time
from mechscope.lock import folder_lock
with folder_lock(sys.argv[1], what="holder test"):
    print("locked", flush=True)
    time.sleep(600)
"""


def _holder(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_is_refused_and_a_killed_holder_frees_the_folder(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        with pytest.raises(FolderBusyError, match=rf"{out} is being written by another mechscope process "
                                                  rf"\(pid {holder.pid}, holder test\)"):
            with folder_lock(out):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with folder_lock(out) as locked:  # the kernel dropped the dead holder's lock
        assert locked == out


def test_two_train_commands_on_one_out(tmp_path, capsys):
    """The CLI path: while another process writes --out, `mechscope train` exits 2 before any work."""
    from mechscope.apps.cli import main

    out = tmp_path / "out"
    holder = _holder(out)
    try:
        cfg = tmp_path / "job.toml"
        cfg.write_text('[data]\nmodel = "attn-only-induction"\n[sae]\nd_dict = 8\nk = 2\nsite_in = "L0.resid_post"\n')
        start = time.perf_counter()
        assert main(["train", str(cfg), "--out", str(out)]) == 2
        assert time.perf_counter() - start < 30  # refused before loading a model or reading text
        err = capsys.readouterr().err
        assert "being written by another mechscope process" in err and str(out) in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_orphan_temporaries_are_removed_when_a_writer_starts(tmp_path):
    out = tmp_path / "out"
    (out / "runs" / "a").mkdir(parents=True)
    # what a writer killed inside mechscope.files.atomic_path leaves behind
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(out / "runs" / "a" / "checkpoint.safetensors") as tmp:
            tmp.write_bytes(b"half")
            orphan = tmp.with_name(tmp.name + ".keep")
            os.link(tmp, orphan)  # survive atomic_path's own cleanup, as after kill -9
            raise KeyboardInterrupt
    orphan.rename(orphan.with_suffix(""))  # back to <name>.<8 chars>.tmp
    keep = [out / "notes.tmp", out / "runs" / "a" / "metrics.jsonl", out / "data.raw.tmp"]
    for p in keep:
        p.write_text("mine")
    with folder_lock(out):
        pass
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == sorted([LOCK_NAME, "notes.tmp", "runs/a/metrics.jsonl", "data.raw.tmp"])
    assert clean_orphans(out) == []


def test_a_failed_writer_leaves_no_folder_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path / "new"):
            raise RuntimeError("model failed to load")
    assert not (tmp_path / "new").exists()
    with folder_lock(tmp_path / "kept"):
        files.write_text(tmp_path / "kept" / "x.txt", "x")
    assert (tmp_path / "kept" / "x.txt").exists()


def test_writable_dir_names_the_flag_and_the_path(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match=rf"--out {f} is a file, not a folder"):
        writable_dir(f)
    with pytest.raises(ValueError, match=rf"--out {f}/sub is not a writable folder"):
        writable_dir(f / "sub")
