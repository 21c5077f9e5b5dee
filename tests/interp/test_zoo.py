"""Tests of the offline model zoo: shipped models load, meet their cards, and rebuild deterministically."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
import torch

from mechscope.interp import zoo
from mechscope.interp.zoo import recipe
from mechscope.interp.lm_train import consecutive_windows, eval_loss
from mechscope.interp.tokens import token_ids
from mechscope.interp.zoo import corpus, induction, store

LM_NAMES = ["gpt2-shakespeare", "llama-shakespeare"]


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.load(name)
        return cache[name]

    return get


def test_names_and_default():
    assert zoo.DEFAULT == "gpt2-shakespeare"
    assert zoo.names()[0] == zoo.DEFAULT
    assert set(zoo.names()) == {"gpt2-shakespeare", "llama-shakespeare", "attn-only-induction"}


def test_import_is_cheap():
    code = "import sys, mechscope.interp.zoo; print('torch' in sys.modules, 'transformer_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("call", [zoo.load, zoo.card, zoo.model_dir, zoo.build])
def test_unknown_name_lists_the_zoo(call):
    with pytest.raises(ValueError) as err:
        call("gpt5-shakespeare")
    for name in zoo.names():
        assert name in str(err.value)


def test_corpus_splits_are_clean_and_disjoint():
    prov = json.loads((corpus.DATA_DIR / "provenance.json").read_text())
    train_works = corpus.split_works(zoo.corpus_text("train"))
    held_works = corpus.split_works(zoo.corpus_text("heldout"))
    assert len(train_works) == len(prov["splits"]["train"]["works"])
    assert len(held_works) == len(prov["splits"]["heldout"]["works"]) >= 3
    assert not set(prov["splits"]["train"]["works"]) & set(prov["splits"]["heldout"]["works"])
    for w in train_works[:5] + held_works:
        corpus.check_clean("work", w)  # raises on Gutenberg markers, non-ASCII, separators
        assert w == corpus.clean_work(w)  # cleaning is idempotent: the shipped text is a fixed point
    assert "CC-BY 2.5" in prov["license"] and "public domain" in prov["license"]
    assert len(prov["sdist_sha256"]) == 64
    # a stripped work opens on its title and authorship line, not on a licence header
    assert all("by William Shakespeare" in w[:300] for w in held_works)
    assert sum(map(len, held_works)) == prov["splits"]["heldout"]["chars"]
    with pytest.raises(ValueError, match="valid splits"):
        zoo.corpus_path("test")


def test_clean_work_normalises_whitespace():
    raw = "ACT I.\r\n\r\n\r\n\r\nScene I.\t \nHam.  \nWho's there?\n\n\n"
    assert corpus.clean_work(raw) == "ACT I.\n\nScene I.\nHam.\nWho's there?"
    with pytest.raises(ValueError, match="header marker"):
        corpus.check_clean("x", "The Project Gutenberg EBook of Hamlet")


@pytest.mark.parametrize("name", zoo.names())
def test_model_loads_offline_with_tokenizer(name, loaded, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, card = loaded(name)
    assert card["name"] == name and not card["quick"]
    assert not model.training
    tok = model.tokenizer
    assert tok.bos_token is not None and tok.eos_token is not None and tok.pad_token is not None
    tokens = model.to_tokens("To be, or not to be")
    assert tokens[0, 0].item() == tok.bos_token_id and (tokens[0, 1:] != tok.bos_token_id).all()
    assert model.to_string(tokens[0, 1:]) == "To be, or not to be"
    # folding LayerNorm (induction model) drops the LN parameters from what ships
    assert card.get("n_params_shipped", card["n_params"]) == sum(p.numel() for p in model.parameters())


def test_shipped_weights_fit_the_budget():
    total = sum((zoo.model_dir(n) / store.WEIGHTS).stat().st_size for n in zoo.names())
    assert total <= 20 * 2**20


def test_architectures_are_what_the_cards_say(loaded):
    gpt2, _ = loaded("gpt2-shakespeare")
    llama, _ = loaded("llama-shakespeare")
    assert gpt2.cfg.normalization_type == "LN" and gpt2.cfg.positional_embedding_type == "standard"
    assert llama.cfg.normalization_type == "RMS" and llama.cfg.positional_embedding_type == "rotary"
    assert llama.cfg.gated_mlp and llama.cfg.n_key_value_heads < llama.cfg.n_heads
    assert gpt2.tokenizer.get_vocab() == llama.tokenizer.get_vocab()


@pytest.fixture(scope="module")
def heldout_stream(loaded):
    # both LMs share one tokenizer (checked above), so the held-out split is encoded once
    return token_ids(corpus.split_works(zoo.corpus_text("heldout")), loaded(zoo.DEFAULT)[0].tokenizer)


@pytest.mark.parametrize("name", LM_NAMES)
def test_heldout_loss_below_card_bound(name, loaded, heldout_stream):
    model, card = loaded(name)
    sl = card["heldout_slice"]
    held = heldout_stream
    windows = consecutive_windows(held, sl["seq_len"], model.tokenizer.bos_token_id, sl["windows"])
    loss = eval_loss(model, windows)
    assert loss < card["heldout_loss_bound"]
    assert loss == pytest.approx(sl["loss"], abs=0.01)
    # the oracle: a language model must beat the held-out text's own unigram entropy
    assert card["heldout_loss_bound"] < card["heldout_unigram_entropy"] - 0.5
    assert card["heldout_unigram_entropy"] == pytest.approx(recipe.unigram_entropy(held), abs=1e-3)


def test_induction_heads_score_as_the_card_says(loaded):
    model, card = loaded("attn-only-induction")
    scores = induction.head_scores(model, period=17, n_rows=48, seed=999)  # fresh rows, new period
    l0, prev = card["prev_token_head"]
    l1, ind = card["induction_head"]
    assert (l0, l1) == (0, 1)
    assert scores["prev_token"][0, prev] > 0.5
    assert scores["induction"][1, ind] > 0.5
    # the structure, not a positional shortcut: layer 0 does not do induction, layer 1's head does not
    # merely attend to the previous token
    assert scores["induction"][0].max() < 0.2
    assert scores["prev_token"][1, ind] < 0.2
    assert scores["prev_token"][0, prev] == pytest.approx(card["prev_token_scores"][0][prev], abs=0.1)
    assert scores["induction"][1, ind] == pytest.approx(card["induction_scores"][1][ind], abs=0.1)


def test_induction_circuit_is_causal(loaded):
    model, card = loaded("attn-only-induction")
    gen = torch.Generator().manual_seed(7)
    tokens, mask = induction.repeated_batch(32, 80, model.cfg.d_vocab, 5, 30,
                                            model.tokenizer.bos_token_id, gen)
    base = induction.repeat_loss(model, tokens, mask)
    assert base < 0.5  # far below the chance loss ln(95) = 4.55 on repeats
    prev = tuple(card["prev_token_head"])
    assert induction.repeat_loss(model, tokens, mask, ablate=prev) > base + 2.0
    # layer-1 induction heads are redundant; removing all that score > 0.5 breaks induction
    scores = induction.head_scores(model, period=17, n_rows=48, seed=999)
    ind_heads = [(1, h) for h in range(model.cfg.n_heads) if scores["induction"][1, h] > 0.5]
    assert tuple(card["induction_head"]) in ind_heads
    assert induction.repeat_loss(model, tokens, mask, ablate=ind_heads) > base + 2.0
    # a control: ablating a non-circuit layer-0 head costs little
    other = next(h for h in range(model.cfg.n_heads) if h != prev[1])
    assert induction.repeat_loss(model, tokens, mask, ablate=(0, other)) < base + 0.5


def test_induction_heads_read_the_prev_token_head_through_keys(loaded):
    model, card = loaded("attn-only-induction")
    comp = induction.k_composition(model)
    ind, prev = card["induction_head"][1], card["prev_token_head"][1]
    assert comp[ind, prev].item() == pytest.approx(card["k_composition_circuit"], abs=1e-3)
    assert comp[ind].argmax().item() == prev  # keys compose with the prev-token head above all others
    assert comp[ind, prev] > 1.5 * comp[ind][torch.arange(comp.shape[1]) != prev].max()


def test_k_composition_matches_explicit_product(loaded):
    model, _ = loaded("attn-only-induction")
    comp = induction.k_composition(model)
    qk = model.W_Q[1, 2] @ model.W_K[1, 2].T
    ov = model.W_V[0, 3] @ model.W_O[0, 3]
    expected = (qk @ ov.T).norm() / (qk.norm() * ov.norm())
    assert comp[2, 3].item() == pytest.approx(expected.item(), rel=1e-4)


def test_repeated_batch_structure():
    gen = torch.Generator().manual_seed(0)
    tokens, mask = induction.repeated_batch(16, 40, 97, 4, 12, 1, gen)
    assert (tokens[:, 0] == 1).all() and (tokens[:, 1:] >= induction.FIRST_SYMBOL).all()
    for row, m in zip(tokens, mask):
        p = int((~m).sum()) - 1  # targets before p + 1 are not predictable
        assert 4 <= p <= 12
        assert torch.equal(row[1 + p:], row[1: len(row) - p])
    with pytest.raises(ValueError, match="min_period"):
        induction.repeated_batch(2, 10, 97, 4, 12, 1, gen)


@pytest.mark.parametrize("name", ["attn-only-induction", "gpt2-shakespeare"])
def test_quick_build_is_deterministic(name, tmp_path):
    from safetensors.torch import load_file

    a = zoo.build(name, tmp_path / "a", seed=3, quick=True)
    b = zoo.build(name, tmp_path / "b", seed=3, quick=True)
    wa, wb = (load_file(str(d / store.WEIGHTS)) for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    if name == "attn-only-induction":  # the seed matters (checked on the cheaper model)
        wc = load_file(str(zoo.build(name, tmp_path / "c", seed=4, quick=True) / store.WEIGHTS))
        assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    card = json.loads((a / store.CARD).read_text())
    assert card["quick"] and card["seed"] == 3 and card["tokens_seen"] > 0
    model, _ = store.load_folder(a)  # the quick folder loads like a shipped one
    assert model.cfg.n_layers >= 1


def test_corpus_gzip_is_reproducible(tmp_path):
    # gzip written with mtime 0: same text, same bytes, so rebuilding the corpus is a no-op in git
    text = zoo.corpus_text("heldout")
    with open(tmp_path / "x.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(text.encode())
    assert (tmp_path / "x.gz").read_bytes() == zoo.corpus_path("heldout").read_bytes()


def test_loading_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    zoo.load("attn-only-induction")
    assert torch.equal(torch.rand(3), expected)
