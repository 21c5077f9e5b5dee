"""Activation caches that identify themselves reproducibly and refuse damaged or foreign manifests."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import torch

from mechscope.interp.activations import ActivationBatch
from mechscope.interp.cache import CacheError, CachedActivations, write_cache
from mechscope.interp.sites import Site


def _rows(n: int = 40, seed: int = 0) -> ActivationBatch:
    g = torch.Generator().manual_seed(seed)
    ar = torch.arange(n)
    return ActivationBatch({Site.parse("L0.resid_post"): torch.randn(n, 6, generator=g),
                            Site.parse("L1.mlp_out"): torch.randn(n, 3, generator=g)}, ar, ar // 8, ar % 8)


def _build(out, **kw):
    return write_cache([_rows()], out, 40, rows_per_shard=16, meta={"model": "m", "tokens": {"b": 1, "a": 2}}, **kw)


_BUILD_IN_CHILD = "import runpy, sys; runpy.run_path(sys.argv[1])['_build'](sys.argv[2])"


def test_identical_rebuilds_are_byte_identical(tmp_path):
    """safetensors keeps header metadata in a per-process hash map: with several metadata keys
    two builds of the same rows differ in bytes; the cache writes one key, so every rebuild (in
    this process and in fresh ones) has the same shard hashes and a run can resume on it."""
    builds = [_build(tmp_path / f"in{i}") for i in range(3)]
    for i in range(3):
        out = tmp_path / f"child{i}"
        subprocess.run([sys.executable, "-c", _BUILD_IN_CHILD, __file__, str(out)], check=True)
        builds.append(out)
    manifests = [json.loads((b / "manifest.json").read_text()) for b in builds]
    assert len({json.dumps(m["shards"]) for m in manifests}) == 1
    for b in builds[1:]:
        for s in manifests[0]["shards"]:
            assert (b / s["file"]).read_bytes() == (builds[0] / s["file"]).read_bytes()
    configs = {json.dumps(CachedActivations(b).config()) for b in builds}
    assert len(configs) == 1  # what a checkpoint records of its data source


def _flip(path, at=-5):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_shard_is_caught_on_first_read_by_default(tmp_path):
    out = _build(tmp_path / "c")
    good = CachedActivations(out).read_all()
    _flip(out / "shard_00001.safetensors")  # same size: only a hash can tell
    reader = CachedActivations(out, batch_tokens=16)  # opening stays cheap: sizes only
    batches = iter(reader)
    assert torch.equal(next(batches)["L0.resid_post"], good["L0.resid_post"][:16])  # shard 0 is intact
    with pytest.raises(CacheError, match="shard_00001.safetensors is corrupt"):
        next(batches)
    unchecked = CachedActivations(out, verify=False).read_all()  # the opt-out reads what is there
    fields = lambda b: [*b.acts.values(), b.token_ids, b.seq_index, b.positions]  # noqa: E731
    assert not all(torch.equal(x, y) for x, y in zip(fields(unchecked), fields(good)))
    with pytest.raises(CacheError, match="corrupt"):
        CachedActivations(out, verify=True)
    with pytest.raises(CacheError, match="verify must be"):
        CachedActivations(out, verify="sometimes")


def test_hash_is_checked_once_per_shard_per_reader(tmp_path, monkeypatch):
    out = _build(tmp_path / "c")
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    reader = CachedActivations(out, batch_tokens=8, epochs=3)
    assert sum(len(b) for b in reader) == 3 * 40
    assert len(calls) == 3  # three shards, three epochs: each shard hashed once


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["shards"][0].update(file="../outside.safetensors"), "not a shard file of this folder"),
    (lambda m: m["shards"][0].update(file="/etc/passwd"), "not a shard file of this folder"),
    (lambda m: m.pop("total_rows"), "lacks the field.*total_rows"),
    (lambda m: m["shards"][1].pop("sha256"), "shard entry 1 needs the fields"),
    (lambda m: m["d"].pop("L1.mlp_out"), "no width d for sites"),
    (lambda m: m.update(dtype="int8"), "dtype 'int8'"),
])
def test_bad_manifests_are_refused_naming_the_problem(tmp_path, edit, message):
    out = _build(tmp_path / "c")
    (tmp_path / "outside.safetensors").write_bytes((out / "shard_00000.safetensors").read_bytes())
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match=message):
        CachedActivations(out)


def test_manifest_that_is_not_an_object(tmp_path):
    out = _build(tmp_path / "c")
    (out / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CacheError, match="JSON object"):
        CachedActivations(out)
    shutil.rmtree(out)
