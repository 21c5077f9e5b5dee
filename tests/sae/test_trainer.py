import json

import pytest
import torch

from mechscope.interp.activations import ActivationBatch
from mechscope.interp.sites import Site
from mechscope.sae.checkpoint import read_checkpoint
from mechscope.sae.evaluate import evaluate
from mechscope.sae.sweep import train_sweep
from mechscope.sae.synthetic import PairedSource, PlantedSource
from mechscope.sae.trainer import lr_at, train


class Crashing:
    """Yields the source's batches, then raises at batch ``at`` (a simulated crash)."""

    def __init__(self, source, at):
        self.source, self.at = source, at

    def __iter__(self):
        for i, b in enumerate(self.source):
            if self.source.position > self.at:
                raise KeyboardInterrupt("simulated crash")
            yield b

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, s):
        self.source.load_state_dict(s)


def _src(**kw):
    return PlantedSource(d=16, n_features=32, batch_size=64, seed=3, **kw)


@pytest.mark.parametrize("arch", ["topk", "codebook", "jumprelu"])
def test_resume_is_bitwise_exact(tmp_path, make_cfg, arch):
    # dead_tokens small so aux-k (topk) and dead-code replacement (codebook, uses the run's RNG) act
    c = make_cfg(architecture=arch, steps=24, checkpoint_every=8, log_every=4, dead_tokens=256,
                 warmup_steps=3, decay_fraction=0.5)
    full = train(c, _src(), tmp_path / "full", resume=False)
    with pytest.raises(KeyboardInterrupt):
        train(c, Crashing(_src(), at=13), tmp_path / "cut")
    assert read_checkpoint(tmp_path / "cut" / "checkpoint.safetensors")[0]["step"] == 8
    resumed = train(c, _src(), tmp_path / "cut")
    assert resumed.resumed_from == 8
    a, b = full.dictionary.state_dict(), resumed.dictionary.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(s) for s in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == list(range(4, 25, 4))  # lines past the crash were redone


def test_resume_rejects_other_config_and_corrupt_checkpoint(tmp_path, make_cfg):
    c = make_cfg(steps=4)
    train(c, _src(), tmp_path)
    with pytest.raises(ValueError, match="different configs"):
        train(c.replace(lr=1e-2), _src(), tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable mechscope checkpoint"):
        train(c, _src(), tmp_path)


def test_sweep_equals_runs_one_by_one(tmp_path, make_cfg):
    grid = {**make_cfg(steps=12).to_dict(), "architecture": ["topk", "batchtopk", "relu"], "lr": [1e-3, 5e-3]}
    sweep = train_sweep(grid, _src(), tmp_path / "sweep", resume=False)
    assert len(sweep.runs) == 6 and len(sweep.table) == 6
    assert (tmp_path / "sweep" / "results.csv").read_text().splitlines()[0].startswith("run,architecture,lr")
    assert json.loads((tmp_path / "sweep" / "results.json").read_text()) == sweep.table
    for r in sweep.runs:
        alone = train(r.config, _src(), tmp_path / r.out_dir.name, resume=False)
        for k, v in alone.dictionary.state_dict().items():
            assert torch.equal(v, r.dictionary.state_dict()[k]), (r.out_dir.name, k)


def test_lr_schedule(make_cfg):
    c = make_cfg(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.2)
    lrs = [lr_at(c.train, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[50] == 1.0
    assert lrs[80] == 1.0 and lrs[90] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.05)


def test_normalisation_and_b_dec_init(tmp_path, make_cfg):
    src = _src()
    x = src.batch(0) * 7.0 + 3.0

    class Scaled(PlantedSource):
        def batch(self, i):
            return super().batch(i) * 7.0 + 3.0

    r = train(make_cfg(steps=1, b_dec_init="mean", lr=1e-9), Scaled(d=16, n_features=32, batch_size=64, seed=3), tmp_path)
    m = r.dictionary
    assert float((x * m.scale_in).pow(2).sum(-1).mean()) == pytest.approx(16.0, rel=1e-4)
    assert torch.allclose(m.b_dec / m.scale_out, x.mean(0), atol=1e-4)  # mean init, raw units
    assert torch.allclose(m.W_dec.norm(dim=-1), torch.ones(48), atol=1e-5)


def test_activation_batch_source(tmp_path, make_cfg):
    src = _src()

    def batches():
        for i in range(5):
            x = src.batch(i)
            n = x.shape[0]
            z = torch.zeros(n, dtype=torch.int64)
            yield ActivationBatch({Site.parse("L1.resid_post"): x, Site.parse("L0.mlp_out"): -x}, z, z, z)

    r = train(make_cfg(steps=5, site_in="L1.resid_post", normalize=False), batches(), tmp_path)
    assert r.metrics["step"] == 5
    with pytest.raises(ValueError, match="site_in is empty"):
        train(make_cfg(steps=2), batches(), tmp_path / "b")
    with pytest.raises(RuntimeError, match="ran out at step 5"):
        train(make_cfg(steps=8, site_in="L1.resid_post"), batches(), tmp_path / "c")


def test_transcoder_learns_a_known_linear_map(tmp_path, make_cfg, mmcs):
    g = torch.Generator().manual_seed(0)
    M = torch.randn(20, 16, generator=g) / 4
    base = PlantedSource(d=16, n_features=16, batch_size=256, mean_active=2, seed=1)
    c = make_cfg(architecture="topk", transcoder=True, d_out=20, d_dict=32, k=4, steps=300, lr=1e-2)
    r = train(c, PairedSource(base, M, torch.full((20,), 0.5)), tmp_path)
    # ground truth: feature g_i at the input site writes M g_i at the output site
    assert mmcs(r.dictionary.directions.detach(), base.features @ M.T) > 0.9
    held_out = PairedSource(PlantedSource(d=16, n_features=16, batch_size=256, mean_active=2, seed=1), M,
                            torch.full((20,), 0.5))
    held_out.load_state_dict({"position": 1000})
    e = evaluate(r.dictionary, held_out, n_batches=2)
    assert e.fvu < 0.1 and e.l0 <= 4


def test_resuming_a_finished_run_is_a_no_op(tmp_path, make_cfg):
    c = make_cfg(steps=6, log_every=3)
    first = train(c, _src(), tmp_path)
    again = train(c, _src(), tmp_path)
    assert again.resumed_from == 6 and again.metrics == first.metrics
    for k, v in first.dictionary.state_dict().items():
        assert torch.equal(v, again.dictionary.state_dict()[k])


def test_train_step_always_reports_a_train_step_and_the_log_holds_its_metrics(tmp_path, make_cfg):
    from mechscope.sae.trainer import Run, TrainStep, train_step

    run = Run.new(make_cfg(architecture="relu"), tmp_path)
    x = _src().batch(0)
    run.model.init_from_data(x, x)
    steps = [train_step(run, _src().batch(i), _src().batch(i), i) for i in range(3)]
    assert all(type(s) is TrainStep for s in steps) and [s.step for s in steps] == [1, 2, 3]
    assert list(steps[0].terms) == ["mse", "l1"]
    s = steps[-1]
    assert float(s.loss) == pytest.approx(float(s.terms["mse"] + run.model.l1_coeff(2) * s.terms["l1"]), rel=1e-5)
    assert TrainStep.from_dict(json.loads(json.dumps(s.to_dict()))).to_dict() == s.to_dict()
    r = train(make_cfg(steps=6, log_every=3), _src(), tmp_path / "t")
    last = json.loads((tmp_path / "t" / "metrics.jsonl").read_text().splitlines()[-1])
    assert list(last) == ["step", "time", "loss", "l0", "fvu", "dead_fraction", "lr", "mse", "aux"]
    assert {k: v for k, v in last.items() if k != "time"} == r.metrics == r.last.to_dict()
