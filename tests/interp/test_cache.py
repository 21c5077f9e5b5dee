"""Activation cache: bitwise round trip against the live stream, shuffled reading, resume, damage."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.interp.activations import ActivationBatch
from mechscope.interp.cache import CacheError, CachedActivations, build_cache, write_cache
from mechscope.interp.sites import Site
from mechscope.interp.stream import ActivationSource, ActivationStream
from mechscope.interp.token_memmap import MemmapTokenStream

from .helpers import assert_same, random_token_file

SITES = ["L0.resid_post", "L1.z.H1"]
N_CTX = 12
N_TOKENS = 150  # not a multiple of the shard size
SHARD = 64


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    return random_token_file(tmp_path_factory.mktemp("toks") / "ids.bin", n_docs=14)


@pytest.fixture(scope="module")
def live_rows(tiny_gpt2, token_file):
    """Oracle: the first N_TOKENS rows of the live stream in order."""
    s = ActivationStream(tiny_gpt2, MemmapTokenStream(token_file, N_CTX), SITES, batch_tokens=40,
                         model_batch_size=4, shuffle_buffer=0)
    return ActivationBatch.concat(list(s)).index(slice(0, N_TOKENS))


@pytest.fixture(scope="module")
def cache_dir(tiny_gpt2, token_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    return build_cache(tiny_gpt2, MemmapTokenStream(token_file, N_CTX), SITES, out, N_TOKENS,
                       rows_per_shard=SHARD, model_batch_size=4)


def test_round_trip_is_bitwise(cache_dir, live_rows, token_file):
    m = json.loads((cache_dir / "manifest.json").read_text())
    assert m["model"] == "tiny-gpt2" and m["sites"] == SITES and m["d"] == {"L0.resid_post": 32, "L1.z.H1": 8}
    assert m["total_rows"] == N_TOKENS and [s["rows"] for s in m["shards"]] == [64, 64, 22]
    assert m["tokens"] == MemmapTokenStream(token_file, N_CTX).config() and not m["exhausted"]
    assert not list(cache_dir.glob("*.tmp"))
    cached = CachedActivations(cache_dir, batch_tokens=50, model="tiny-gpt2", verify=True)
    assert isinstance(cached, ActivationSource) and len(cached) == N_TOKENS
    batches = list(cached)
    assert [len(b) for b in batches] == [50, 50, 50]
    assert_same(ActivationBatch.concat(batches), live_rows)
    assert_same(cached.read_all(), live_rows)
    only = CachedActivations(cache_dir, batch_tokens=1000, sites=["L1.z.H1"])
    assert only.sites == (Site(1, "z", 1),)
    assert torch.equal(next(iter(only))["L1.z.H1"], live_rows["L1.z.H1"])


def test_half_precision_cache(tiny_gpt2, token_file, live_rows, tmp_path):
    out = build_cache(tiny_gpt2, MemmapTokenStream(token_file, N_CTX), SITES, tmp_path / "bf", N_TOKENS,
                      rows_per_shard=100, model_batch_size=4, dtype="bfloat16")
    got = CachedActivations(out).read_all()
    for s in got.sites:
        assert got.acts[s].dtype == torch.bfloat16
        assert torch.equal(got.acts[s], live_rows.acts[s].to(torch.bfloat16))


def test_shuffled_reading_is_a_seeded_permutation(cache_dir, live_rows):
    def run(seed):
        return list(CachedActivations(cache_dir, batch_tokens=32, shuffle=True, seed=seed))

    a, b, c = run(4), run(4), run(5)
    for x, y in zip(a, b):
        assert_same(x, y)
    cat = ActivationBatch.concat(a)
    assert [len(x) for x in a] == [32] * 4 + [22]
    key = cat.seq_index * 100 + cat.positions
    assert not torch.equal(key, live_rows.seq_index * 100 + live_rows.positions)
    assert not torch.equal(key, ActivationBatch.concat(c).seq_index * 100 + ActivationBatch.concat(c).positions)
    assert_same(cat.index(torch.argsort(key)), live_rows)


@pytest.mark.parametrize("shuffle", [False, True])
def test_reader_resumes_exactly(cache_dir, tmp_path, shuffle):
    def make():
        return CachedActivations(cache_dir, batch_tokens=23, shuffle=shuffle, seed=1, epochs=2)

    full = list(make())
    assert sum(len(x) for x in full) == 2 * N_TOKENS
    for k in (0, 3, len(full) - 1):
        s = make()
        it = iter(s)
        head = [next(it) for _ in range(k)]
        torch.save(s.state_dict(), tmp_path / "s.pt")
        fresh = make()
        fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
        rest = list(fresh)
        assert len(head) + len(rest) == len(full)
        for x, y in zip(head + rest, full):
            assert_same(x, y)
    with pytest.raises(CacheError, match="another config"):
        CachedActivations(cache_dir, batch_tokens=10).load_state_dict(make().state_dict())


def test_mismatch_and_damage_are_clear_errors(cache_dir, tmp_path, tiny_gpt2, token_file):
    with pytest.raises(CacheError, match="built from model 'tiny-gpt2', not 'gpt2'"):
        CachedActivations(cache_dir, model="gpt2")
    with pytest.raises(CacheError, match="cached sites: L0.resid_post, L1.z.H1"):
        CachedActivations(cache_dir, sites=["L1.resid_post"])
    with pytest.raises(CacheError, match="already holds an activation cache"):
        build_cache(tiny_gpt2, MemmapTokenStream(token_file, N_CTX), SITES, cache_dir, 10)
    with pytest.raises(CacheError, match="no manifest.json"):
        CachedActivations(tmp_path)

    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cache_dir, bad)
    shard = bad / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # same size, one flipped byte in the tensor data
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard_00001.safetensors is corrupt"):
        CachedActivations(bad, verify=True)
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CacheError, match="truncated"):
        CachedActivations(bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["shards"][1]["bytes"] = len(data) // 2
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="corrupt or unreadable"):
        list(CachedActivations(bad, verify=False))  # the parser itself sees the damage
    m["version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="version 99"):
        CachedActivations(bad)


def test_interrupted_build_leaves_no_manifest(live_rows, tmp_path):
    def dying():
        yield live_rows.index(slice(0, 100))
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_cache(dying(), tmp_path / "c", 150, rows_per_shard=64)
    assert (tmp_path / "c" / "shard_00000.safetensors").exists()
    with pytest.raises(CacheError, match="build did not finish"):
        CachedActivations(tmp_path / "c")
    with pytest.warns(UserWarning, match="ended after 100 of 150"):
        out = write_cache(iter([live_rows.index(slice(0, 100))]), tmp_path / "c", 150, rows_per_shard=64)
    c = CachedActivations(out)
    assert len(c) == 100 and c.manifest["exhausted"]
    assert_same(c.read_all(), live_rows.index(slice(0, 100)))


def test_killed_build_resumes_from_its_last_complete_shard(tiny_gpt2, token_file, cache_dir, tmp_path, monkeypatch):
    """A build killed while writing its third shard restarts from the two complete shards (they
    are not written again) and ends with the bytes of an uninterrupted build."""
    import mechscope.interp.cache as cache_mod

    real, written = cache_mod._write_shard, []

    def dies_at_third(out, index, rows, dtype):
        written.append(index)
        if index == 2 and len(written) == 3:
            raise KeyboardInterrupt("killed")
        return real(out, index, rows, dtype)

    monkeypatch.setattr(cache_mod, "_write_shard", dies_at_third)
    build = lambda: build_cache(tiny_gpt2, MemmapTokenStream(token_file, N_CTX), SITES, tmp_path / "c",  # noqa: E731
                                N_TOKENS, rows_per_shard=SHARD, model_batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        build()
    assert not (tmp_path / "c" / "manifest.json").exists() and (tmp_path / "c" / "build_state.safetensors").exists()
    out = build()
    assert written == [0, 1, 2, 2]  # the resumed build wrote only the missing shard
    assert not (out / "build_state.safetensors").exists()
    # (shard bytes hold safetensors header metadata in hash-map order: compare the tensors)
    got, want = (json.loads((c / "manifest.json").read_text()) for c in (out, cache_dir))
    strip = lambda m: {**m, "shards": [(s["file"], s["rows"], s["bytes"]) for s in m["shards"]]}  # noqa: E731
    assert strip(got) == strip(want)
    a, b = CachedActivations(out, verify=True), CachedActivations(cache_dir)
    for i in range(3):
        assert_same(a.read_shard(i), b.read_shard(i))
    # another request over the leftovers of a killed build starts over instead of resuming
    written.clear()
    (out / "manifest.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        build()
    build_cache(tiny_gpt2, MemmapTokenStream(token_file, N_CTX), SITES, tmp_path / "c", N_TOKENS,
                rows_per_shard=32, model_batch_size=4)
    assert written[3:] == list(range(5))


def test_shuffle_buffer_mixes_shards_and_resumes_exactly(cache_dir, live_rows):
    from mechscope.interp.shuffle import ShuffleBuffer

    def make():
        return ShuffleBuffer(CachedActivations(cache_dir, batch_tokens=25, epochs=1), capacity=100,
                             batch_tokens=20, seed=5)

    batches = list(make())
    rows = ActivationBatch.concat(batches)
    # a permutation of the cached rows: every row once (keyed by window and position)
    key = lambda b: sorted(zip(b.seq_index.tolist(), b.positions.tolist()))  # noqa: E731
    assert key(rows) == key(live_rows)
    assert not torch.equal(rows.seq_index, live_rows.seq_index)
    shard_of = {k: i // SHARD for i, k in enumerate(zip(live_rows.seq_index.tolist(), live_rows.positions.tolist()))}
    assert any(len({shard_of[k] for k in zip(b.seq_index.tolist(), b.positions.tolist())}) > 1 for b in batches)
    # exact resume from a state taken mid-stream
    s = make()
    it = iter(s)
    for _ in range(3):
        next(it)
    state = s.state_dict()
    again = make()
    again.load_state_dict(state)
    for a, b in zip(list(again), batches[3:], strict=True):
        assert_same(a, b)
