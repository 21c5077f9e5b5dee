"""Every shipped example config (examples/configs/*.toml) trains to a sane result when shortened.

Shortened only through what a user has: ``table.field=value`` overrides of `mechscope train`
(steps, tokens per batch, context, held-out windows; warm-ups scaled with the steps), and for the
codebook job the same tables edited before `run_codebook_job`. Sane means not collapsed (the
collapse this guards against: relu.toml at FVU 0.95, CE loss recovered 0.17): held-out FVU
well below 1, CE loss recovered well above 0, L0 where the architecture puts it (top-k: k;
batch-top-k: about k; penalised: below the ~d_dict/2 of an untrained ReLU, above 0), all finite.
80 steps of 512 tokens is far from converged: an L1 / L0 penalty has only begun to sparsify.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.toml"))
STEPS = 80
SHORT = ["data.n_ctx=64", "data.batch_tokens=512", "data.shuffle_buffer=2048", "data.eval_windows=8",
         "data.model_batch_size=8", f"sae.steps={STEPS}", "sae.progress=false", "sae.log_every=1000"]


def _shortened(path: Path) -> list[str]:
    """The overrides: ``SHORT`` plus every warm-up scaled by the same factor as the steps."""
    import tomllib

    sae = tomllib.loads(path.read_text())["sae"]
    scale = STEPS / sae.get("steps", 1000)
    warm = [f"sae.{k}={max(1, round(v * scale))}" for k, v in sae.items() if k.endswith("warmup_steps")]
    return SHORT + warm


def _check_dictionary(r, name: str) -> None:
    dc = r.config.dictionary
    rec, spliced = r.eval.reconstruction, r.eval.spliced
    where = f"{name} {r.name}: FVU {rec.fvu:.3f} L0 {rec.l0:.1f} CE recovered {spliced.ce_loss_recovered:.3f}"
    assert all(math.isfinite(v) for v in (rec.fvu, rec.l0, spliced.ce_loss_recovered)), where
    assert rec.fvu < 0.8, where
    assert spliced.ce_loss_recovered > 0.3, where
    if dc.architecture in ("topk", "batchtopk"):
        assert 0.5 * dc.k <= rec.l0 <= 2 * dc.k, where
    else:  # penalised sparsity: below an untrained ReLU's half of the latents, and something fires
        assert 1 <= rec.l0 <= dc.d_dict / 2, where


def _codebook(path: Path, tmp_path: Path) -> None:
    from mechscope.apps.commands.codebook import load_config, run_codebook_job

    cfg = {k: dict(v) for k, v in load_config(path).items()}
    cfg["pretrain"].update(steps=150, warmup_steps=5)
    cfg["finetune"].update(steps=20, warmup_steps=2)
    cfg["eval"].update(sequences=32, steer_prompts_per_state=1)
    report = run_codebook_job(cfg, tmp_path, log=lambda _: None)
    base, coded = report["base_transitions"], report["transitions"]
    # the base model has learned the machine (valid successors above chance), and the codebooks
    # keep what it learned instead of collapsing it
    assert base["valid_mass"] > base["chance_valid_mass"] + 0.2, report
    assert coded["valid_mass"] > coded["chance_valid_mass"] + 0.1, report
    assert all(math.isfinite(v) for v in report["loss"].values()), report


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_trains_to_a_sane_result(path, tmp_path):
    if path.name.startswith("codebook"):
        return _codebook(path, tmp_path)
    from mechscope.apps.commands.train import load_job, run_job

    results = run_job(load_job(path, _shortened(path)), tmp_path, progress=False)
    assert results, path.name
    for r in results:
        _check_dictionary(r, path.name)
