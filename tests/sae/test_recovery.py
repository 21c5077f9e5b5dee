"""Ground-truth recovery on planted-feature data."""

import pytest
import torch

from mechscope.sae.evaluate import evaluate
from mechscope.sae.synthetic import HierarchicalSource, PlantedSource
from mechscope.sae.trainer import train


@pytest.mark.parametrize("arch, magnitude, k, lr", [("topk", "uniform", 3, 3e-3), ("mp", "uniform", 3, 3e-3),
                                                    ("batchtopk", "uniform", 3, 3e-3),
                                                    ("codebook", "const", 2, 1e-2)])
def test_planted_directions_are_recovered(tmp_path, make_cfg, mmcs, arch, magnitude, k, lr):
    # codebook codes enter with coefficient 1 and always k of them, so its ground truth has
    # constant magnitudes (and fewer active features per row, as the sum is always of k codes)
    src = PlantedSource(d=16, n_features=32, batch_size=256, mean_active=k, magnitude=magnitude, seed=0)
    r = train(make_cfg(architecture=arch, d_dict=64, k=k, steps=300, lr=lr), src, tmp_path)
    assert mmcs(r.dictionary.directions.detach(), src.features) >= 0.9


@pytest.mark.parametrize("arch, kw", [("relu", dict(l1_coeff=0.5, l1_warmup_steps=50)),
                                      ("jumprelu", dict())])  # its defaults (SAELens: l0_coeff 1)
def test_penalised_architectures_recover_and_are_sparse(tmp_path, make_cfg, mmcs, arch, kw):
    src = PlantedSource(d=16, n_features=32, batch_size=256, mean_active=3, seed=0)
    r = train(make_cfg(architecture=arch, d_dict=64, steps=300, lr=3e-3, **kw), src, tmp_path)
    held = PlantedSource(d=16, n_features=32, batch_size=256, mean_active=3, seed=0)
    held.load_state_dict({"position": 10_000})
    e = evaluate(r.dictionary, held, n_batches=2)
    assert mmcs(r.dictionary.directions.detach(), src.features) >= 0.9
    assert e.fvu < 0.2 and e.l0 < 64 / 2  # reconstructs, and far from dense


def test_mp_beats_topk_on_hierarchical_features(tmp_path, make_cfg):
    """Measure: held-out FVU at equal sparsity (L0 = k = 2) on parent/child data.

    Each active parent brings exactly one of its children, whose direction has cosine 0.8 with
    the parent. A one-shot top-k encoder scores all atoms against x at once, so a parent atom and
    the child atoms (all correlated with x) compete; matching pursuit removes the parent's
    contribution before choosing the child (Costa et al. 2025, §4). The paper's claim, checked
    here, is a better reconstruction at the same L0 (about a third lower FVU at this scale).
    """
    fvus = {}
    for arch in ("topk", "mp"):
        src = HierarchicalSource(d=32, n_parents=8, n_children=4, batch_size=256, p_parent=0.15,
                                 child_cosine=0.8, seed=0)
        r = train(make_cfg(architecture=arch, d_in=32, d_dict=64, k=2, steps=300, lr=3e-3), src,
                  tmp_path / arch)
        held = HierarchicalSource(d=32, n_parents=8, n_children=4, batch_size=512, p_parent=0.15,
                                  child_cosine=0.8, seed=0)
        held.load_state_dict({"position": 10_000})
        e = evaluate(r.dictionary, held, n_batches=2)
        assert e.l0 <= 2
        fvus[arch] = e.fvu
    assert fvus["mp"] < 0.85 * fvus["topk"], fvus


def test_hierarchical_source_structure():
    src = HierarchicalSource(d=16, n_parents=3, n_children=4, batch_size=500, p_parent=0.5, child_cosine=0.6)
    c = src.coefficients(0)
    parents, children = c[:, :3], c[:, 3:].reshape(-1, 3, 4)
    # a child fires iff its parent does, and exactly one child per active parent
    assert torch.equal((children > 0).sum(-1), (parents > 0).long())
    cos = (src.children * src.parents[:, None]).sum(-1)
    assert torch.allclose(cos, torch.full((3, 4), 0.6), atol=1e-5)
    assert torch.allclose(src.children.norm(dim=-1), torch.ones(3, 4), atol=1e-5)
    assert torch.equal(src.batch(7), src.batch(7))  # a pure function of (seed, index)


def test_gated_and_matryoshka_recover_planted_directions(tmp_path, make_cfg, mmcs):
    src = PlantedSource(d=16, n_features=32, batch_size=256, mean_active=3, seed=0)
    held = PlantedSource(d=16, n_features=32, batch_size=256, mean_active=3, seed=0)
    held.load_state_dict({"position": 10_000})
    for arch, kw in (("gated", dict(l1_coeff=3.0, l1_warmup_steps=50)), ("matryoshka", dict(k=3))):
        r = train(make_cfg(architecture=arch, d_dict=64, steps=300, lr=3e-3, **kw), src, tmp_path / arch)
        src.load_state_dict({"position": 0})
        e = evaluate(r.dictionary, held, n_batches=2)
        held.load_state_dict({"position": 10_000})
        assert mmcs(r.dictionary.directions.detach(), src.features) >= 0.9, arch
        assert e.fvu < 0.3 and e.l0 < 64 / 4, (arch, e.fvu, e.l0)
