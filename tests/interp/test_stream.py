"""Activation streams: rows against direct capture, shuffling as a permutation, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.interp.activations import ActivationBatch
from mechscope.interp.capture import capture
from mechscope.interp.sites import Site
from mechscope.interp.stream import ActivationSource, ActivationStream, StreamStateError
from mechscope.interp.token_memmap import MemmapTokenStream, write_token_memmap

from .helpers import assert_same, random_token_file

SITES = ["L0.resid_post", "L1.mlp_out", "L1.z.H1"]
N_CTX = 12


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    return random_token_file(tmp_path_factory.mktemp("toks") / "ids.npy", n_docs=12)


def tokens(token_file, **kw):
    return MemmapTokenStream(token_file, N_CTX, **kw)


def sort_rows(batch: ActivationBatch) -> ActivationBatch:
    key = batch.seq_index * 10_000 + batch.positions
    return batch.index(torch.argsort(key))


def reference_rows(model, token_file, sites, exclude_special):
    """Oracle: one forward over all windows at once, flattened and masked by hand."""
    ts = tokens(token_file)
    windows = torch.stack([ts.window(i) for i in range(len(ts))])
    out = capture(model, windows, sites)
    keep = ts.keep_mask(windows) if exclude_special else torch.ones_like(windows, dtype=torch.bool)
    seq = torch.arange(len(ts))[:, None].expand_as(windows)
    pos = torch.arange(N_CTX)[None].expand_as(windows)
    acts = {s: out[s].reshape(len(ts), N_CTX, -1)[keep] for s in sites}
    return ActivationBatch(acts, windows[keep], seq[keep], pos[keep])


@pytest.mark.parametrize("exclude_special", [False, True])
def test_rows_match_direct_capture(tiny_gpt2, token_file, exclude_special):
    sites = [tiny_gpt2.site(s) for s in SITES]
    stream = ActivationStream(tiny_gpt2, tokens(token_file), sites, batch_tokens=50, model_batch_size=3,
                              shuffle_buffer=0, exclude_special=exclude_special)
    assert isinstance(stream, ActivationSource)
    batches = list(stream)
    assert all(len(b) == 50 for b in batches[:-1]) and 0 < len(batches[-1]) <= 50
    got = ActivationBatch.concat(batches)
    ref = reference_rows(tiny_gpt2, token_file, sites, exclude_special)
    assert got.sites == tuple(sites)
    assert stream.d == {sites[0]: 32, sites[1]: 32, sites[2]: 8}
    for s in sites:  # batched vs single-window forward: equal up to float reassociation
        torch.testing.assert_close(got.acts[s], ref.acts[s], rtol=1e-5, atol=1e-5)
    for f in ("token_ids", "seq_index", "positions"):
        assert torch.equal(getattr(got, f), getattr(ref, f))
    if exclude_special:
        assert not torch.isin(got.token_ids, torch.tensor([0, 1])).any()
    else:
        assert (got.token_ids[got.positions == 0] == 0).all()


def test_pattern_site_rows(tiny_gpt2, token_file):
    stream = ActivationStream(tiny_gpt2, tokens(token_file), ["L1.pattern", "L0.pattern.H2"], batch_tokens=N_CTX,
                              model_batch_size=1, shuffle_buffer=0, exclude_special=False)
    first = next(iter(stream))
    w = tokens(token_file).window(0)
    full = capture(tiny_gpt2, w[None], ["L1.pattern"])[Site(1, "pattern")][0]  # [h, q, k]
    assert torch.equal(first["L1.pattern"], full.transpose(0, 1).reshape(N_CTX, -1))
    assert torch.allclose(first["L0.pattern.H2"].sum(-1), torch.ones(N_CTX))


def test_shuffle_is_seeded_permutation(tiny_gpt2, token_file):
    def run(seed, buf=40):
        s = ActivationStream(tiny_gpt2, tokens(token_file), SITES, batch_tokens=16, model_batch_size=4,
                             shuffle_buffer=buf, seed=seed)
        return list(s)

    plain = ActivationBatch.concat(run(0, buf=0))
    a, b, c = run(1), run(1), run(2)
    assert all(len(x) == 16 for x in a[:-1])
    for x, y in zip(a, b):
        assert_same(x, y)
    cat_a = ActivationBatch.concat(a)
    assert not torch.equal(cat_a.seq_index * 100 + cat_a.positions, plain.seq_index * 100 + plain.positions)
    assert not torch.equal(cat_a.positions, ActivationBatch.concat(c).positions)
    assert_same(sort_rows(cat_a), plain)  # same rows, bit for bit


@pytest.mark.parametrize("buf", [0, 40])
def test_resume_yields_exactly_the_remaining_batches(tiny_gpt2, tmp_path, buf):
    rng = np.random.default_rng(1)
    docs = [rng.integers(2, 100, size=int(n)).tolist() for n in rng.integers(3, 30, size=8)]
    path = write_token_memmap(tmp_path / "small.bin", docs, sep_id=1, bos_id=0)

    def make():
        return ActivationStream(tiny_gpt2, MemmapTokenStream(path, N_CTX, shuffle=True, seed=3, epochs=2), SITES,
                                batch_tokens=16, model_batch_size=3, shuffle_buffer=buf, seed=7)

    original, states, full = make(), {}, []
    for batch in original:
        full.append(batch)
        if len(full) in (1, 4, 9):
            torch.save(original.state_dict(), tmp_path / f"s{len(full)}.pt")
    assert len(full) > 10
    for k in (1, 4, 9):
        fresh = make()
        fresh.load_state_dict(torch.load(tmp_path / f"s{k}.pt", weights_only=True))
        rest = list(fresh)
        assert len(rest) == len(full) - k
        for x, y in zip(rest, full[k:]):
            assert_same(x, y)
        assert fresh.batches_yielded == len(full)


def test_bad_arguments(tiny_gpt2, token_file):
    with pytest.raises(ValueError, match="shuffle_buffer"):
        ActivationStream(tiny_gpt2, tokens(token_file), SITES, batch_tokens=16, shuffle_buffer=8)
    with pytest.raises(ValueError, match="n_ctx=40"):
        ActivationStream(tiny_gpt2, MemmapTokenStream(token_file, 40), SITES)
    with pytest.raises(ValueError, match="valid layers"):
        ActivationStream(tiny_gpt2, tokens(token_file), ["L5.resid_post"])
    s = ActivationStream(tiny_gpt2, tokens(token_file), SITES, batch_tokens=16, shuffle_buffer=32)
    other = ActivationStream(tiny_gpt2, tokens(token_file), SITES[:1], batch_tokens=16, shuffle_buffer=32)
    with pytest.raises(StreamStateError, match="another config"):
        other.load_state_dict(s.state_dict())


def test_text_corpus_end_to_end_resume(tmp_path):
    """Documents through a real tokenizer, both shuffle buffers on, EOS rows excluded; resumed
    from a state mid-way, the stream yields exactly the original's remaining batches."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from mechscope.interp.models import Model
    from mechscope.interp.documents import DocumentTokenStream

    docs = ["the cat sat on the mat", "a dog ran in the park", "hello world, hello there", "to be or not"] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = Model.from_config(dict(n_layers=1, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_mlp=32,
                                   d_vocab=len(tokenizer), act_fn="gelu_new"), name="tiny-text")

    def make():
        ts = DocumentTokenStream.from_texts(docs, tokenizer, 8, shuffle_windows=4, seed=2, tokenize_batch=3)
        return ActivationStream(model, ts, ["L0.resid_post"], batch_tokens=10, model_batch_size=2,
                                shuffle_buffer=24, seed=1)

    original, full = make(), []
    for batch in original:
        full.append(batch)
        if len(full) == 3:
            state = original.state_dict()
    assert len(full) > 5
    assert not (ActivationBatch.concat(full).token_ids == tokenizer.eos_token_id).any()
    fresh = make()
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(rest) == len(full) - 3
    for x, y in zip(rest, full[3:]):
        assert_same(x, y)


def test_site_dims_match_the_config_and_the_stream_rows(tiny_gpt2, tiny_llama, token_file):
    from mechscope.interp.capture import site_shapes
    from mechscope.interp.stream import site_dims

    g = dict(d_model=32, n_heads=4, d_head=8, d_mlp=64)
    want = {"L0.resid_post": g["d_model"], "L1.z": g["n_heads"] * g["d_head"], "L1.z.H2": g["d_head"],
            "L0.mlp_post": g["d_mlp"], "L1.pattern": g["n_heads"] * 6, "L1.pattern.H1": 6}
    sites = [tiny_gpt2.site(s) for s in want]
    assert site_dims(tiny_gpt2, sites, 6) == {tiny_gpt2.site(s): d for s, d in want.items()}
    assert site_shapes(tiny_gpt2, ["L1.z"], 3) == {Site(1, "z"): (3, 4, 8)}
    # GQA: the llama fixture has 2 key/value heads of width 8
    assert site_dims(tiny_llama, [Site(0, "k"), Site(0, "q")]) == {Site(0, "k"): 16, Site(0, "q"): 32}
    stream = ActivationStream(tiny_gpt2, tokens(token_file), sites, batch_tokens=N_CTX, model_batch_size=1,
                              shuffle_buffer=0, exclude_special=False)
    batch = next(iter(stream))
    assert {s: batch[str(s)].shape[1] for s in sites if s.kind != "pattern"} == \
        {s: d for s, d in stream.d.items() if s.kind != "pattern"}
