"""Token streams: windows against a hand-built concatenation, exact resumption, memmaps, sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.interp.documents import DocumentTokenStream
from mechscope.interp.token_memmap import MemmapTokenStream, open_token_memmap, write_token_memmap
from mechscope.interp.tokens import TokenStreamError, open_token_stream

DOCS = [
    "the cat sat on the mat and the dog sat on the log",
    "hello world, hello there",
    "",
    "a dog ran in the park while the cat slept on the warm mat",
    "short",
    "to be or not to be, that is the question: whether tis nobler in the mind to suffer",
    "the end",
] * 3


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(DOCS, trainer)
    folder = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def reference_windows(tokenizer, docs, n_ctx, prepend_bos=True):
    """Oracle: encode each document alone, join with EOS, cut bodies, prepend BOS."""
    eos = tokenizer.eos_token_id
    flat = [t for d in docs for t in tokenizer.encode(d, add_special_tokens=False) + [eos]]
    m = n_ctx - 1 if prepend_bos else n_ctx
    bos = [tokenizer.bos_token_id] if prepend_bos else []
    return [torch.tensor(bos + flat[i * m:(i + 1) * m]) for i in range(len(flat) // m)]


def take(stream, k):
    return [w for _, w in zip(range(k), stream)]


@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("tokenize_batch", [1, 4])
def test_windows_match_reference(tokenizer, prepend_bos, tokenize_batch):
    s = DocumentTokenStream.from_texts(DOCS, tokenizer, 8, prepend_bos=prepend_bos, tokenize_batch=tokenize_batch)
    got = list(s)
    ref = reference_windows(tokenizer, DOCS, 8, prepend_bos)
    assert len(got) == len(ref) > 10
    for g, r in zip(got, ref):
        assert g.dtype == torch.int64 and torch.equal(g, r)


def test_keep_mask_excludes_bos_and_separator(tokenizer):
    s = DocumentTokenStream.from_texts(DOCS, tokenizer, 8)
    batch = next(s.batches(4))
    assert batch.shape == (4, 8)
    mask = s.keep_mask(batch)
    assert not mask[:, 0].any()
    assert torch.equal(mask, batch != tokenizer.eos_token_id)


def _check_resume(make, k_values, total):
    full = [(i, w) for i, w in make().iter_indexed()]
    assert len(full) == total
    for k in k_values:
        s = make()
        it = s.iter_indexed()
        head = [next(it) for _ in range(k)]
        state = s.state_dict()
        rest_original = list(it)
        fresh = make()
        fresh.load_state_dict(state)
        rest_resumed = list(fresh.iter_indexed())
        assert [i for i, _ in head + rest_resumed] == [i for i, _ in full]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(head + rest_resumed, full))
        assert len(rest_original) == len(rest_resumed)


@pytest.mark.parametrize("shuffle_windows", [0, 5])
def test_document_stream_resumes_exactly(tokenizer, shuffle_windows, tmp_path):
    def make():
        return DocumentTokenStream.from_texts(DOCS, tokenizer, 8, shuffle_windows=shuffle_windows,
                                              seed=3, epochs=2, tokenize_batch=3)
    total = 2 * len(reference_windows(tokenizer, DOCS, 8))
    _check_resume(make, [0, 1, 7, total // 2, total - 1, total], total)
    # a state survives a safe (weights_only) round trip through torch.save
    s = make()
    take(s, 9)
    torch.save(s.state_dict(), tmp_path / "state.pt")
    fresh = make()
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(s, fresh))


def test_buffer_shuffle_is_a_seeded_permutation(tokenizer):
    natural = list(DocumentTokenStream.from_texts(DOCS, tokenizer, 8).iter_indexed())

    def run(seed):
        return list(DocumentTokenStream.from_texts(DOCS, tokenizer, 8, shuffle_windows=6, seed=seed).iter_indexed())

    a, b, c = run(1), run(1), run(2)
    assert [i for i, _ in a] == [i for i, _ in b]
    assert [i for i, _ in a] != [i for i, _ in natural] and [i for i, _ in a] != [i for i, _ in c]
    assert sorted(i for i, _ in a) == [i for i, _ in natural]
    for i, w in a:  # each window keeps its content and natural index
        assert torch.equal(w, natural[i][1])


@pytest.mark.parametrize("suffix", [".npy", ".bin"])
def test_memmap_matches_document_stream(tokenizer, tmp_path, suffix):
    path = write_token_memmap(tmp_path / f"toks{suffix}", DOCS, tokenizer, tokenize_batch=5)
    arr, meta = open_token_memmap(path)
    assert arr.dtype == np.uint16 and meta["sep_id"] == tokenizer.eos_token_id
    mm = MemmapTokenStream(path, 8)
    ref = reference_windows(tokenizer, DOCS, 8)
    assert len(mm) == len(ref)
    assert all(torch.equal(a, b) for a, b in zip(mm, ref))
    assert torch.equal(mm.window(3), ref[3])
    assert mm.special_ids == {tokenizer.eos_token_id}
    assert isinstance(open_token_stream(path, 8), MemmapTokenStream)
    assert not list(tmp_path.glob("*.tmp"))


def test_memmap_shuffle_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 70000, size=int(n)).tolist() for n in rng.integers(5, 40, size=30)]
    path = write_token_memmap(tmp_path / "ids.bin", docs, sep_id=0, bos_id=0)
    assert open_token_memmap(path)[0].dtype == np.uint32
    flat = np.concatenate([np.asarray(d + [0]) for d in docs])
    mm = MemmapTokenStream(path, 16, shuffle=True, seed=5, epochs=2)
    order = [i for i, _ in mm.iter_indexed()]
    n = len(flat) // 15
    assert len(mm) == n and sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))
    assert order[:n] != list(range(n)) and order[:n] != order[n:]
    for i in (0, n - 1):
        assert torch.equal(mm.window(i)[1:], torch.from_numpy(flat[i * 15:(i + 1) * 15]).long())

    def make():
        return MemmapTokenStream(path, 16, shuffle=True, seed=5, epochs=2)

    _check_resume(make, [0, 3, n, 2 * n - 1], 2 * n)
    other = MemmapTokenStream(path, 16, shuffle=True, seed=6)
    with pytest.raises(TokenStreamError, match="another config"):
        other.load_state_dict(make().state_dict())


def test_memmap_write_errors(tmp_path):
    with pytest.raises(TokenStreamError, match="does not fit uint16"):
        write_token_memmap(tmp_path / "a.bin", [[1, 70000]], dtype="uint16")
    with pytest.raises(TokenStreamError, match="no tokenizer"):
        write_token_memmap(tmp_path / "b.bin", ["text"])
    write_token_memmap(tmp_path / "c.bin", [[1, 2, 3]], sep_id=0)
    with open(tmp_path / "c.bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(TokenStreamError, match="sidecar says"):
        MemmapTokenStream(tmp_path / "c.bin", 2, bos_id=0)
    with pytest.raises(TokenStreamError, match="fewer than one window"):
        MemmapTokenStream(write_token_memmap(tmp_path / "d.bin", [[1, 2, 3]], sep_id=0), 64, bos_id=0)


def test_text_files_and_globs(tokenizer, tmp_path):
    for i, d in enumerate(DOCS[:7]):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i}.txt").write_text(d)
    files = sorted(tmp_path.rglob("*.txt"))
    texts = [f.read_text() for f in files]
    ref = reference_windows(tokenizer, texts, 6)
    by_folder = list(DocumentTokenStream.from_files(tmp_path, tokenizer, 6))
    by_glob = list(open_token_stream(str(tmp_path / "*" / "doc*.txt"), 6, tokenizer))
    assert len(ref) > 3
    assert all(torch.equal(a, b) for a, b in zip(by_folder, ref)) and len(by_folder) == len(ref)
    assert all(torch.equal(a, b) for a, b in zip(by_glob, ref)) and len(by_glob) == len(ref)
    (tmp_path / "para.txt").write_text("first para here\n\n\nsecond one\n\nthird")
    split = list(DocumentTokenStream.from_files(tmp_path / "para.txt", tokenizer, 3, split="\n\n"))
    want = reference_windows(tokenizer, ["first para here", "\nsecond one", "third"], 3)
    assert len(split) == len(want) and all(torch.equal(a, b) for a, b in zip(split, want))
    with pytest.raises(TokenStreamError, match="no text files"):
        DocumentTokenStream.from_files(tmp_path / "nothing*.txt", tokenizer, 6)


def test_streaming_dataset_path(tokenizer, tmp_path, monkeypatch):
    """The Hub path (`load_dataset(..., streaming=True)`) exercised on a local text file."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lines = [d for d in DOCS if d]
    file = tmp_path / "corpus.txt"
    file.write_text("\n".join(lines) + "\n")

    def make():
        ds = datasets.load_dataset("text", data_files=str(file), split="train", streaming=True)
        return DocumentTokenStream.from_dataset(ds, tokenizer, 8, tokenize_batch=4)

    ref = reference_windows(tokenizer, lines, 8)
    assert all(torch.equal(a, b) for a, b in zip(make(), ref)) and len(list(make())) == len(ref)
    _check_resume(make, [5], len(ref))
    hub_path = DocumentTokenStream.from_hf("text", tokenizer, 8, dataset_kwargs={"data_files": str(file)})
    assert hub_path.config()["source"] == "hf" and hub_path.config()["streaming"]
    got = list(hub_path)
    assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref))
    local = datasets.Dataset.from_dict({"body": lines})
    got = list(DocumentTokenStream.from_dataset(local, tokenizer, 8, text_column="body"))
    assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref))
    s = DocumentTokenStream.from_dataset(local, tokenizer, 8, text_column="body")
    take(s, 4)
    r = DocumentTokenStream.from_dataset(local, tokenizer, 8, text_column="body")
    r.load_state_dict(s.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(r, ref[4:]))
    with pytest.raises(TokenStreamError, match="no column 'text'"):
        list(DocumentTokenStream.from_dataset(local, tokenizer, 8))


def test_bad_configs(tokenizer):
    with pytest.raises(TokenStreamError, match="n_ctx must be"):
        DocumentTokenStream.from_texts(DOCS, tokenizer, 1)
    with pytest.raises(TokenStreamError, match="needs a tokenizer"):
        DocumentTokenStream.from_texts(DOCS, None, 8)
    with pytest.raises(TokenStreamError, match="epochs"):
        DocumentTokenStream.from_texts(DOCS, tokenizer, 8, epochs=0)
    s = DocumentTokenStream.from_texts(DOCS, tokenizer, 8)
    with pytest.raises(TokenStreamError, match="'memmap' token stream"):
        s.load_state_dict({"kind": "memmap"})


# -- text specs: the one resolver ------------------------------------------------------------------
def test_token_ids_is_the_concatenation_the_windows_cut(tokenizer, tmp_path):
    from mechscope.interp.tokens import token_ids

    flat = token_ids(DOCS, tokenizer)
    ref = reference_windows(tokenizer, DOCS, 8)
    bodies = torch.cat([w[1:] for w in ref])
    assert torch.equal(flat[: len(bodies)], bodies) and len(flat) - len(bodies) < 7
    assert torch.equal(token_ids(DOCS, tokenizer, max_tokens=5), flat[:5])
    path = write_token_memmap(tmp_path / "t.npy", [[1, 2, 3], [4]], sep_id=0)
    assert token_ids(path, None).tolist() == open_token_memmap(path)[0].tolist()


def test_zoo_spec_is_the_corpus_works(tokenizer):
    from mechscope.interp.tokens import open_token_stream
    from mechscope.interp.zoo.corpus import corpus_text, split_works

    works = [w for w in split_works(corpus_text("heldout")) if w.strip()]
    got = take(open_token_stream("zoo:heldout", 16, tokenizer), 5)
    ref = take(DocumentTokenStream.from_texts(works, tokenizer, 16), 5)
    assert len(got) == 5 and all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("spec, reason", [
    ("zoo:test", "zoo text is"), ("hf:", "no dataset name"), ("/no/such/toks.npy", "memmap file not found"),
    ("/no/such/file.txt", "no text files"), ("", "non-empty"),
])
def test_check_text_spec_names_the_field_and_the_valid_forms(spec, reason):
    from mechscope.interp.tokens import check_text_spec

    with pytest.raises(TokenStreamError, match=reason) as err:
        check_text_spec(spec, "data.text")
    assert "data.text" in str(err.value) and "hf:NAME[:SPLIT]" in str(err.value)
    with pytest.raises(TokenStreamError, match=reason):
        open_token_stream(spec, 8, None)  # a mistyped path never falls through to the hub


def test_check_text_spec_accepts_every_form(tmp_path):
    from mechscope.interp.tokens import check_text_spec

    (tmp_path / "a.txt").write_text("x")
    mm = write_token_memmap(tmp_path / "t.bin", [[1, 2]], sep_id=0)
    for spec in ("zoo:train", "zoo:heldout", "hf:wikitext:test", str(tmp_path), str(tmp_path / "*.txt"), str(mm)):
        assert check_text_spec(spec) == spec


def test_window_batches_regroup_without_losing_or_reordering():
    from mechscope.interp.tokens import window_batches

    w = torch.arange(7 * 4).view(7, 4)
    items = [w[0], w[1:4], w[4], w[5:]]  # single windows and stacks, mixed
    got = list(window_batches(items, 3))
    assert [len(b) for b in got] == [3, 3, 1] and torch.equal(torch.cat(got), w)
    assert torch.equal(torch.cat(list(window_batches(w, 2))), w)  # a tensor of windows
    cut = list(window_batches(items, 3, n_tokens=10))
    assert torch.equal(torch.cat([b.flatten() for b in cut]), w.flatten()[:10])
    mixed = list(window_batches([torch.arange(4), torch.arange(4), torch.arange(3)], 8))
    assert [tuple(b.shape) for b in mixed] == [(2, 4), (1, 3)]
    with pytest.raises(ValueError, match="integer tensors"):
        list(window_batches([torch.zeros(3)], 2))


def test_resolver_takes_a_model_or_a_hooked_transformer(tiny_gpt2, tokenizer, tmp_path):
    from mechscope.interp.tokens import token_ids

    (tmp_path / "a.txt").write_text(DOCS[0])
    tiny_gpt2.tl.tokenizer, old = tokenizer, tiny_gpt2.tl.tokenizer
    try:
        ref = token_ids(str(tmp_path / "a.txt"), tokenizer)
        assert torch.equal(token_ids(str(tmp_path / "a.txt"), tiny_gpt2), ref)
        assert torch.equal(token_ids(str(tmp_path / "a.txt"), tiny_gpt2.tl), ref)
    finally:
        tiny_gpt2.tl.tokenizer = old
