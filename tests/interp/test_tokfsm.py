"""TokFSM generator: the table, the walks and their labels obey the machine."""

from __future__ import annotations

import pytest
import torch

from mechscope.interp.tokfsm import TokFSM


def test_table_has_distinct_successors_without_self_loops():
    fsm = TokFSM(n_states=30, out_degree=5, base=10, seed=3)
    t = fsm.transitions
    assert t.shape == (30, 5)
    for s in range(30):
        row = t[s].tolist()
        assert len(set(row)) == 5 and s not in row and all(0 <= x < 30 for x in row)
    assert fsm.adjacency().sum(1).eq(5).all()


def test_deterministic_given_seed():
    a, b, c = TokFSM(20, 3, seed=1), TokFSM(20, 3, seed=1), TokFSM(20, 3, seed=2)
    assert torch.equal(a.transitions, b.transitions)
    assert not torch.equal(a.transitions, c.transitions)
    sa = a.sample(8, 10, torch.Generator().manual_seed(0))
    sb = b.sample(8, 10, torch.Generator().manual_seed(0))
    assert torch.equal(sa.tokens, sb.tokens)


def test_walks_follow_the_table_and_tokens_spell_states():
    fsm = TokFSM(n_states=37, out_degree=4, base=3, seed=0)  # 4 digits in base 3
    assert fsm.n_digits == 4 and fsm.d_vocab == 4 and fsm.bos == 3
    s = fsm.sample(64, 12, torch.Generator().manual_seed(1))
    assert s.tokens.shape == (64, fsm.seq_len(12)) == (64, 49)
    assert fsm.is_valid(s.states).all()
    assert (s.tokens[:, 0] == fsm.bos).all() and (s.tokens[:, 1:] < fsm.base).all()
    spelled = fsm.undigits(s.tokens[:, 1:].view(64, 12, fsm.n_digits))
    assert torch.equal(spelled, s.states)
    # labels: the state whose digits hold each token, and which digit it is
    assert (s.state_at[:, 0] == -1).all() and (s.digit_at[:, 0] == -1).all()
    body = s.state_at[:, 1:].view(64, 12, -1)
    assert torch.equal(body, s.states[..., None].expand_as(body))
    assert torch.equal(fsm.digits(s.state_at[:, 1:]).gather(-1, s.digit_at[:, 1:, None]).squeeze(-1),
                       s.tokens[:, 1:])


def test_transitions_are_uniform_over_successors():
    fsm = TokFSM(n_states=10, out_degree=3, base=10, seed=0)
    s = fsm.sample(400, 30, torch.Generator().manual_seed(0)).states
    src, dst = s[:, :-1].flatten(), s[:, 1:].flatten()
    for state in range(10):
        nxt = dst[src == state]
        freq = torch.stack([(nxt == t).float().mean() for t in fsm.successors(state)])
        assert freq.sum() == pytest.approx(1.0)
        assert (freq - 1 / 3).abs().max() < 0.06, (state, freq)


@pytest.mark.parametrize("n_states,base,digits", [(10, 10, 1), (11, 10, 2), (100, 10, 2), (101, 10, 3), (16, 2, 4)])
def test_digit_count(n_states, base, digits):
    assert TokFSM(n_states, 1, base).n_digits == digits


@pytest.mark.parametrize("kwargs,msg", [
    (dict(n_states=1), "n_states must be >= 2"),
    (dict(n_states=5, out_degree=5), "out_degree=5 must be <= n_states - 1"),
    (dict(base=1), "base must be >= 2"),
    (dict(out_degree=0), "out_degree must be a positive integer"),
])
def test_bad_sizes_are_rejected(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        TokFSM(**kwargs)


def test_bad_sample_sizes_are_rejected():
    with pytest.raises(ValueError, match="n_steps >= 1"):
        TokFSM(10, 2).sample(4, 0)
