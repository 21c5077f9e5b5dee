"""Data-parallel reading on the CPU (gloo, 2 processes): each rank runs the model on a disjoint
share of the windows (reads a disjoint share of the cache's shards), and every rank yields exactly
the batches one process yields; a position saved by 2 ranks resumes in 1 process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mechscope.state import load_state

MODEL = "attn-only-induction"
SITES = ["L0.resid_post", "L1.resid_post"]

WORKER = '''
import sys
import torch.distributed as dist
import mechscope.interp.stream as st
from mechscope.interp.cache import CachedActivations
from mechscope.state import save_state
sys.path.insert(0, sys.argv[3])
from test_share_work import model_stream, cache_stream

dist.init_process_group("gloo")
rank, size = dist.get_rank(), dist.get_world_size()
text, cache, _, out = sys.argv[1:5]
ran, read = [], []
real_rows, real_read = st.window_rows, CachedActivations.read_shard
def rows(model, windows, seq_index, *a, **k):
    ran.extend(seq_index.tolist())
    return real_rows(model, windows, seq_index, *a, **k)
def read_shard(self, index):
    read.append(index)
    return real_read(self, index)
st.window_rows, CachedActivations.read_shard = rows, read_shard
result = {}
for name, make, arg in (("stream", model_stream, text), ("cache", cache_stream, cache)):
    source = make(arg)
    source.share_work((rank, size))
    batches = []
    for i, b in enumerate(source):
        batches.append(b)
        if i == 2:
            result[name + "_state"] = source.state_dict()
    result[name] = batches
save_state(f"{out}/rank{rank}.safetensors", {
    "ran": ran, "read": read, "state": result["stream_state"], "cache_state": result["cache_state"],
    **{f"{n}{i}": {"acts": {str(s): a for s, a in b.acts.items()}, "prov": [b.token_ids, b.seq_index, b.positions]}
       for n in ("stream", "cache") for i, b in enumerate(result[n])},
    "n": [len(result["stream"]), len(result["cache"])]})
'''


def model_stream(text):
    from mechscope.interp.models import load_model
    from mechscope.interp.stream import ActivationStream
    from mechscope.interp.tokens import open_token_stream

    model = load_model(MODEL)
    return ActivationStream(model, open_token_stream(str(text), 16, model, epochs=1), SITES, batch_tokens=40,
                            model_batch_size=3, shuffle_buffer=120, seed=1)


def cache_stream(cache):
    from mechscope.interp.cache import CachedActivations
    from mechscope.interp.shuffle import ShuffleBuffer

    reader = CachedActivations(cache, 48, shuffle=True, seed=3, epochs=2)
    return ShuffleBuffer(reader, 160, 48, seed=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mechscope.interp.cache import build_cache
    from mechscope.interp.models import load_model
    from mechscope.interp.tokens import open_token_stream

    tmp = tmp_path_factory.mktemp("share")
    text = tmp / "text.txt"
    text.write_text(" ".join(f"the {w} fox jumps over {i} dogs." for i, w in enumerate(["quick", "lazy", "red"] * 12)))
    model = load_model(MODEL)
    cache = build_cache(model, open_token_stream(str(text), 16, model, epochs=None), SITES, tmp / "cache", 700,
                        rows_per_shard=100, model_batch_size=4)
    return text, cache, tmp


def _same(batch, saved, exact):
    for s, a in batch.acts.items():
        b = saved["acts"][str(s)]
        assert a.shape == b.shape and (torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    for a, b in zip((batch.token_ids, batch.seq_index, batch.positions), saved["prov"]):
        assert torch.equal(a, b)


def test_two_ranks_read_disjoint_shares_and_yield_the_one_process_batches(data):
    text, cache, tmp = data
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(text), str(cache), os.path.dirname(__file__), str(tmp)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_state(tmp / f"rank{r}.safetensors") for r in range(2)]

    one = list(model_stream(text))
    assert ranks[0]["n"][0] == ranks[1]["n"][0] == len(one) > 3
    for r in ranks:
        for i, b in enumerate(one):
            _same(b, r[f"stream{i}"], exact=False)  # float: another process, another thread count
    # the model ran on disjoint windows, shares of 3 windows in turn, together every window once
    ran0, ran1 = set(ranks[0]["ran"]), set(ranks[1]["ran"])
    assert not ran0 & ran1 and ran0 | ran1 == set(range(max(ran0 | ran1) + 1))
    assert len(ranks[0]["ran"]) == len(ran0) and {w // 3 % 2 for w in ran0} == {0} and {w // 3 % 2 for w in ran1} == {1}

    ref = list(cache_stream(cache))
    assert ranks[0]["n"][1] == len(ref) > 3
    for r in ranks:
        for i, b in enumerate(ref):
            _same(b, r[f"cache{i}"], exact=True)
    read0, read1 = ranks[0]["read"], ranks[1]["read"]
    # 7 shards, 2 epochs: the two ranks together read each shard once per epoch, as one process does
    assert sorted(read0 + read1) == sorted(list(range(7)) * 2)

    # a position saved by 2 ranks resumes in 1 process: the same remaining batches
    for make, arg, key, name, expect in ((model_stream, text, "state", "stream", one),
                                         (cache_stream, cache, "cache_state", "cache", ref)):
        resumed = make(arg)
        resumed.load_state_dict(ranks[1][key])
        rest = list(resumed)
        assert len(rest) == len(expect) - 3
        for i, b in enumerate(rest):
            _same(b, {"acts": {str(s): a for s, a in expect[3 + i].acts.items()},
                      "prov": [expect[3 + i].token_ids, expect[3 + i].seq_index, expect[3 + i].positions]},
                  exact=name == "cache")
