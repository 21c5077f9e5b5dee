"""Probing evaluations against planted ground truth: logistic probes, first-letter absorption
(a dictionary with one latent per letter has none; one whose token latents take the letter's
direction on chosen words has exactly that rate), and sparse probing (a latent that encodes the
label gives accuracy ~1 at k = 1, a random dictionary much less)."""

from __future__ import annotations

import pytest
import torch

from mechscope.kernels import SparseCode
from mechscope.sae.absorption import (LETTERS, AbsorptionConfig, AbsorptionError, SpellingSet, absorption,
                                      word_tokens)
from mechscope.sae.probes import accuracy, f1_score, fit_logistic, lbfgs, mean_diff_top_k
from mechscope.sae.sparse_probing import ProbingSet, mean_pool, pooled_codes, sparse_probing, work_lines


# -- probes ----------------------------------------------------------------------------------------
def test_lbfgs_minimises_a_quadratic_exactly():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64)
    A, b = a @ a.T + torch.eye(8, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    theta = lbfgs(lambda t: (float(0.5 * t @ A @ t - b @ t), A @ t - b), torch.zeros(8, dtype=torch.float64),
                  max_iter=100, tol=1e-10)
    assert torch.allclose(theta, torch.linalg.solve(A, b), atol=1e-8)


def test_logistic_probe_is_the_stationary_point_and_finds_the_planted_direction():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 20, generator=g)
    w = torch.randn(2, 20, generator=g)
    y = torch.rand(3000, 2, generator=g) < torch.sigmoid(x @ w.T)  # a true logistic model
    p = fit_logistic(x, y)
    # the balanced, penalised loss on standardised inputs has zero gradient at the fit
    # (recomputed here with autograd, from the raw-input probe mapped back)
    xd = x.double()
    mu, sd = xd.mean(0), xd.std(0, correction=0)
    W = (p.weight.double() * sd).requires_grad_()
    b = (p.bias.double() + p.weight.double() @ mu).requires_grad_()
    yf, n = y.double(), x.shape[0]
    wr = torch.where(y, 0.5 / yf.sum(0), 0.5 / (n - yf.sum(0)))
    z = ((xd - mu) / sd) @ W.T + b
    loss = (wr * torch.nn.functional.binary_cross_entropy_with_logits(z, yf, reduction="none")).sum()
    loss = loss + W.pow(2).sum() / (2 * n)
    gW, gb = torch.autograd.grad(loss, [W, b])
    assert gW.abs().max() < 1e-5 and gb.abs().max() < 1e-5
    assert torch.allclose(p.scores(x).double(), z.detach(), atol=1e-4)
    assert torch.nn.functional.cosine_similarity(p.weight, w).min() > 0.97


def test_mean_difference_selection_and_scores():
    x = torch.tensor([[5.0, 0, 1], [4, 0, 0], [0, 1, 0], [0, 2, 1]])
    y = torch.tensor([[True], [True], [False], [False]])
    assert mean_diff_top_k(x, y, 2).tolist() == [[0, 1]]  # |4.5| then |-1.5|
    assert mean_diff_top_k(x, y, 1, signed=True).tolist() == [[0]]
    s = torch.tensor([[1.0, -1], [-1, 1], [1, 1]])
    t = torch.tensor([[True, False], [False, False], [False, True]])
    assert accuracy(s, t).tolist() == pytest.approx([2 / 3, 2 / 3])
    assert f1_score(s, t).tolist() == pytest.approx([2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="only one class"):
        fit_logistic(x, torch.ones(4, 1, dtype=torch.bool))


# -- absorption: planted dictionaries --------------------------------------------------------------
class PlantedCodes:
    """A dictionary whose code of each known activation row is planted (rows are recognised by
    their nearest stored activation): the ground truth the evaluation must recover."""

    def __init__(self, X: torch.Tensor, codes: torch.Tensor, directions: torch.Tensor) -> None:
        self.X, self.codes, self._dirs = X, codes, directions
        self.d_in, self.d_dict = X.shape[1], codes.shape[1]

    def encode(self, x):
        return SparseCode.from_dense(self.codes[(x @ self.X.T).argmax(1)])

    def decode(self, code):
        return code.dense(self.d_dict) @ self._dirs

    @property
    def directions(self):
        return self._dirs


def _spelling(per_letter: int = 30, seed: int = 0):
    """x_w = 2 u_letter + v_w: 26 letter axes, token directions in the other 38 dimensions."""
    g = torch.Generator().manual_seed(seed)
    n = 26 * per_letter
    letter = torch.arange(26).repeat_interleave(per_letter)
    v = torch.randn(n, 38, generator=g)
    v = torch.cat([torch.zeros(n, 26), v / v.norm(dim=-1, keepdim=True)], 1)
    X = 2 * torch.eye(64)[letter] + v
    test = torch.zeros(n, dtype=torch.bool)
    test[torch.randperm(n, generator=g)[: n // 5]] = True
    data = SpellingSet(X, X, letter, torch.arange(n), ~test, tuple(f" {LETTERS[c]}w{i}" for i, c in enumerate(letter)))
    return data, v


def _planted(data: SpellingSet, v: torch.Tensor, absorbed: torch.Tensor, split_a: bool = False) -> PlantedCodes:
    """Latents: 26 letter latents (u_L, act 2; 'a' in two halves with ``split_a``), then one per
    word: v_w with act 1, or, for an absorbed word, the whole x_w / ||x_w|| with act ||x_w|| while
    its letter latent stays off (the token latent has absorbed the letter)."""
    n = data.x_in.shape[0]
    dirs = torch.cat([torch.eye(64)[:26], torch.eye(64)[:1], torch.zeros(n, 64)])
    codes = torch.zeros(n, 27 + n)
    for w in range(n):
        c, x = int(data.letter[w]), data.x_in[w]
        if absorbed[w]:
            dirs[27 + w], codes[w, 27 + w] = x / x.norm(), x.norm()
            continue
        second_half = split_a and c == 0 and w % 2 == 1
        codes[w, 26 if second_half else c] = 2.0
        dirs[27 + w], codes[w, 27 + w] = v[w], 1.0
    return PlantedCodes(data.x_in, codes, dirs)


def test_one_latent_per_letter_has_no_absorption():
    data, v = _spelling()
    r = absorption(_planted(data, v, torch.zeros(len(v), dtype=torch.bool)), data, AbsorptionConfig(min_letters=26))
    m = r.saebench()["mean"]
    assert len(r.letters) == 26 and all(x.probe_f1 == 1.0 for x in r.letters)
    assert m["mean_absorption_fraction_score"] == 0.0
    assert m["mean_full_absorption_score"] == 0.0
    assert m["mean_num_split_features"] == 1.0
    assert all(x.main_latents == (LETTERS.index(x.first_letter),) for x in r.letters)


def test_planted_absorption_rate_is_recovered_exactly():
    data, v = _spelling()
    g = torch.Generator().manual_seed(5)
    absorbed = torch.rand(len(v), generator=g) < 0.3  # ~30% of each letter's words
    r = absorption(_planted(data, v, absorbed), data, AbsorptionConfig(min_letters=26))
    test = ~data.train
    want = [float(absorbed[test & (data.letter == c)].float().mean()) for c in range(26)]
    got = {x.first_letter: x for x in r.letters}
    for c in range(26):
        row = got[LETTERS[c]]
        assert row.num_probe_true_positives == int((test & (data.letter == c)).sum())
        assert row.mean_absorption_fraction == pytest.approx(want[c], abs=1e-6)
        assert row.full_absorption_rate == pytest.approx(want[c], abs=1e-6)
        assert row.main_latents == (c,)  # absorbed words' token latents are not the letter's
    m = r.saebench()["mean"]
    assert m["mean_absorption_fraction_score"] == pytest.approx(sum(want) / 26, abs=1e-6)
    assert 0.2 < m["mean_full_absorption_score"] < 0.4


def test_a_letter_split_in_two_latents_counts_two_main_latents_and_no_absorption():
    data, v = _spelling()
    r = absorption(_planted(data, v, torch.zeros(len(v), dtype=torch.bool), split_a=True), data,
                   AbsorptionConfig(min_letters=26))
    rows = {x.first_letter: x for x in r.letters}
    assert sorted(rows["a"].main_latents) == [0, 26]
    assert all(rows[c].num_split_features == 1 for c in LETTERS[1:])
    assert r.saebench()["mean"]["mean_num_split_features"] == pytest.approx(27 / 26)
    assert r.saebench()["mean"]["mean_absorption_fraction_score"] == 0.0


def test_absorption_through_a_saelens_sae_equals_the_mechscope_sae():
    from sae_lens import StandardSAE, StandardSAEConfig

    from mechscope.sae.config import ReluConfig
    from mechscope.sae.factory import build_dictionary

    data, _ = _spelling(per_letter=20)
    ours = build_dictionary(ReluConfig(d_in=64, d_dict=96, site_in="L0.resid_pre"))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        W = torch.cat([torch.eye(64)[:26], torch.randn(70, 64, generator=g) / 8])
        ours.W_enc.copy_(W)
        ours.W_dec.copy_(W)
        ours.b_enc.fill_(-0.2)
        ours.b_dec.zero_()
    theirs = StandardSAE(StandardSAEConfig(d_in=64, d_sae=96, dtype="float32", device="cpu"))
    with torch.no_grad():
        theirs.W_enc.copy_(W.T)
        theirs.W_dec.copy_(W)
        theirs.b_enc.fill_(-0.2)
        theirs.b_dec.zero_()
    cfg = AbsorptionConfig(min_letters=20)
    a, b = absorption(ours, data, cfg), absorption(theirs, data, cfg)
    assert a.details() == b.details()


def test_too_few_letters_is_a_clear_error():
    data, v = _spelling(per_letter=4)
    with pytest.raises(AbsorptionError, match=r"only 0 letters have >= 10 word tokens.*a:4"):
        absorption(_planted(data, v, torch.zeros(len(v), dtype=torch.bool)), data)


def test_word_tokens_of_a_character_level_vocabulary_are_none():
    chars = [chr(c) for c in range(32, 127)]
    assert word_tokens(lambda i: chars[i], len(chars)) == {}
    vocab = ["the", " the", " The", " x1", " ", " Zebra", "\nand"]
    assert word_tokens(lambda i: vocab[i], len(vocab)) == {1: (" the", 19), 2: (" The", 19), 5: (" Zebra", 25)}


# -- sparse probing --------------------------------------------------------------------------------
class ReluAtoms:
    """f = relu(x A^T), x̂ = f A: a ReLU dictionary with the given atoms."""

    def __init__(self, A):
        self.A, self.d_in, self.d_dict = A, A.shape[1], A.shape[0]

    def encode(self, x):
        return SparseCode.from_dense((x @ self.A.T).relu())

    def decode(self, code):
        return code.dense(self.d_dict) @ self.A

    @property
    def directions(self):
        return self.A


def _probing(n: int = 600, tokens: int = 2, d: int = 256, seed: int = 0) -> ProbingSet:
    """Three classes; each token row is N(0, I_d) + 4 e_label."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=g)
    example = torch.arange(n).repeat_interleave(tokens)
    x = torch.randn(n * tokens, d, generator=g) + 4 * torch.eye(d)[label[example]]
    train = torch.rand(n, generator=g) < 0.7
    return ProbingSet(x, example, label, train, ("x", "y", "z"))


def test_pooling_of_rows_and_codes():
    x = torch.tensor([[1.0, -2], [3, 4], [5, 6]])
    ex = torch.tensor([0, 0, 1])
    assert mean_pool(x, ex, 2).tolist() == [[2.0, 1.0], [5.0, 6.0]]
    d = ReluAtoms(torch.eye(2))
    assert pooled_codes(d, x, ex, 2, chunk=2).tolist() == [[2.0, 2.0], [5.0, 6.0]]


def test_a_latent_that_encodes_the_label_is_found_at_k1_and_a_random_dictionary_is_worse():
    data = _probing()
    planted = sparse_probing(ReluAtoms(torch.eye(256)), data, ks=(1, 2, 5))
    g = torch.Generator().manual_seed(3)
    R = torch.randn(64, 256, generator=g)
    rand = sparse_probing(ReluAtoms(R / R.norm(dim=-1, keepdim=True)), data, ks=(1, 2, 5))
    assert planted.sae_top_k[1] > 0.95
    assert planted.llm_test_accuracy > 0.95 and planted.llm_top_k[1] > 0.95
    assert rand.sae_top_k[1] < planted.sae_top_k[1] - 0.2
    assert rand.llm_test_accuracy == planted.llm_test_accuracy  # the dense baseline ignores the dictionary
    fields = planted.saebench()
    assert set(fields["sae"]) >= {"sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_5_test_accuracy"}
    assert set(fields["llm"]) == {"llm_test_accuracy", "llm_top_1_test_accuracy", "llm_top_2_test_accuracy",
                                  "llm_top_5_test_accuracy"}


def test_work_lines_drop_speaker_headings_and_short_lines():
    texts = ["FIRST WITCH.\nWhen shall we three meet again\nshort\n", "MACBETH.\nSo foul and fair a day I have not seen\n"]
    lines, labels = work_lines(texts, ["a", "b"], per_class=5)
    assert sorted(zip(labels, lines)) == [(0, "When shall we three meet again"),
                                         (1, "So foul and fair a day I have not seen")]
