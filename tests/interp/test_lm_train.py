"""The one LM training loop: schedule, loss, parameter groups, hooks, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mechscope.interp.lm_train import (
    LMBatch, LMTrainConfig, consecutive_windows, decay_groups, eval_loss, lr_factor, next_token_loss,
    random_windows, train_lm,
)


class Bigram(nn.Module):
    """logits[t] = W[x_t]: a model whose optimum is known (the bigram log-probabilities)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.zeros(vocab, vocab))
        self.b = nn.Parameter(torch.zeros(vocab))

    def forward(self, tokens):
        return self.W[tokens] + self.b


def _cycle_sampler(vocab: int, batch: int = 8, pos: int = 12):
    def sample(gen):
        start = torch.randint(0, vocab, (batch, 1), generator=gen)
        return (start + torch.arange(pos)) % vocab  # x_{t+1} = x_t + 1 (mod vocab)
    return sample


def test_lr_schedule_warms_up_and_decays():
    f = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)


def test_masked_loss_matches_reference():
    gen = torch.Generator().manual_seed(0)
    logits, tokens = torch.randn(3, 5, 7, generator=gen), torch.randint(0, 7, (3, 5), generator=gen)
    mask = torch.rand(3, 5, generator=gen) > 0.4
    ref = [-(logits[b, t - 1].log_softmax(-1)[tokens[b, t]]) for b in range(3) for t in range(1, 5) if mask[b, t]]
    assert next_token_loss(logits, tokens, mask).item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-5)
    full = F.cross_entropy(logits[:, :-1].reshape(-1, 7), tokens[:, 1:].reshape(-1))
    assert next_token_loss(logits, tokens).item() == pytest.approx(full.item(), rel=1e-6)


def test_training_reaches_the_known_optimum_and_is_deterministic():
    vocab = 5
    cfg = LMTrainConfig(steps=150, lr=0.1, warmup_steps=5, log_every=50)
    runs = []
    for _ in range(2):
        net = Bigram(vocab)
        runs.append((net, train_lm(net, _cycle_sampler(vocab), cfg)))
    (a, ra), (b, rb) = runs
    assert torch.equal(a.W, b.W) and ra.losses == rb.losses
    # the cycle is deterministic: the optimal loss is 0 nats
    assert ra.losses[-1] < 0.05 < ra.losses[0]
    assert [r["step"] for r in ra.rows] == [0, 50, 100, 149]
    assert ra.tokens_seen == 150 * 8 * 12 and not a.training


def test_hooks_and_parameter_list():
    vocab = 5
    net = Bigram(vocab)
    seen = []
    # only W trains; an extra loss on b would move b if b were in the optimiser
    run = train_lm(net, _cycle_sampler(vocab), LMTrainConfig(steps=20, lr=0.1, log_every=10),
                   params=[net.W], aux_loss=lambda: net.b.pow(2).sum() + 1.0,
                   after_step=lambda gen: {"gen_is_shared": isinstance(gen, torch.Generator)},
                   log=seen.append)
    assert torch.equal(net.b, torch.zeros(vocab))
    assert seen == run.rows and all(r["aux_loss"] == pytest.approx(1.0) and r["gen_is_shared"] for r in seen)


def test_masked_batches_only_train_the_masked_targets():
    vocab = 5
    net = Bigram(vocab)

    def sample(gen):
        tokens = _cycle_sampler(vocab)(gen)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[tokens == 2] = True  # only predictions of token 2 (from token 1) count
        return LMBatch(tokens, mask)

    train_lm(net, sample, LMTrainConfig(steps=30, lr=0.1), params=[net.W])
    assert torch.equal(net.W[[0, 2, 3, 4]], torch.zeros(4, vocab)) and net.W[1].abs().sum() > 0


def test_decay_groups_leave_vectors_and_positions_alone():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.W_E, self.W_pos, self.b = (nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(4, 2)),
                                            nn.Parameter(torch.zeros(2)))

    net = Tiny()
    decay, rest = decay_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert [p is net.W_E for p in decay["params"]] == [True]
    assert {id(p) for p in rest["params"]} == {id(net.W_pos), id(net.b)}


def test_windows_and_eval_loss():
    stream = torch.arange(100)
    w = consecutive_windows(stream, 10, bos=-1)
    assert w.shape == (11, 10) and (w[:, 0] == -1).all() and torch.equal(w[:, 1:].flatten(), stream[:99])
    r = random_windows(stream, 6, 10, -1, torch.Generator().manual_seed(0))
    assert (r[:, 0] == -1).all() and (r[:, 2:] - r[:, 1:-1] == 1).all()
    with pytest.raises(ValueError, match="too short"):
        random_windows(torch.arange(5), 2, 10, 0, torch.Generator())
    vocab = 5
    net = Bigram(vocab)  # zero logits: uniform prediction, loss log(vocab)
    assert eval_loss(net, _cycle_sampler(vocab)(torch.Generator().manual_seed(1)), batch=3) == \
        pytest.approx(math.log(vocab), rel=1e-6)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(warmup_steps=11, steps=10), dict(lr=0.0),
                                 dict(betas=(0.9, 1.5)), dict(min_lr_ratio=2.0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LMTrainConfig(**bad)


def test_config_from_dict_names_unknown_fields():
    assert LMTrainConfig.from_dict({"lr": 1, "betas": [0.9, 0.95]}).betas == (0.9, 0.95)
    with pytest.raises(ValueError, match="valid: .*warmup_steps"):
        LMTrainConfig.from_dict({"warmup": 3})
