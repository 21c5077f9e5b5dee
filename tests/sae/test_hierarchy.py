"""Hierarchy recovery metrics (MMCS of parents / children, absorption) against oracle dictionaries."""

import pytest
import torch

from mechscope.kernels import SparseCode
from mechscope.sae.synthetic import HierarchicalSource, hierarchy_recovery


class _GroundTruth:
    """Atoms = the true features; the code is the true coefficients (solved exactly), optionally
    with the parent latents silenced and their direction folded into each child's atom."""

    def __init__(self, src: HierarchicalSource, absorb: bool) -> None:
        self.src, self.absorb = src, absorb
        P = src.n_parents
        feats = src.features.clone()
        if absorb:  # child atom = parent + child: the parent latent is never needed
            parent_of = torch.arange(P).repeat_interleave(src.n_children)
            feats[P:] = feats[P:] + src.parents[parent_of]
        self.atoms = feats
        self.d_in, self.d_dict = src.d, feats.shape[0]

    @property
    def directions(self):
        return self.atoms

    def encode(self, x):
        coef = torch.linalg.lstsq(self.atoms.T, x.T).solution.T  # exact: the atoms are independent
        if self.absorb:
            coef[:, : self.src.n_parents] = 0
        return SparseCode.from_dense(coef * (coef.abs() > 1e-4))

    def decode(self, code):
        return code.dense(self.d_dict) @ self.atoms


@pytest.mark.parametrize("absorb", [False, True])
def test_hierarchy_recovery_oracles(absorb):
    src = HierarchicalSource(d=32, n_parents=3, n_children=3, batch_size=256, p_parent=0.3, child_cosine=0.6)
    rec = hierarchy_recovery(_GroundTruth(src, absorb), src, n_batches=2)
    assert rec.parent_mmcs == pytest.approx(1.0, abs=1e-5)  # the parent atoms are there either way
    if absorb:
        assert rec.absorption_rate == pytest.approx(1.0)
        assert rec.child_mmcs < 0.99  # child atoms carry the parent direction
    else:
        assert rec.absorption_rate == pytest.approx(0.0)
        assert rec.child_mmcs == pytest.approx(1.0, abs=1e-5)
