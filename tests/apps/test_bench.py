"""The training benchmark against SAELens and sparsify, on tiny shapes."""

from mechscope.apps.bench.train import bench_train, format_bench


def test_bench_smoke():
    rows = bench_train(steps=1, d_in=16, d_sae=64, k=4, batch=32)
    impls = {r["impl"]: r for r in rows}
    assert impls["mechscope"]["tokens_per_s"] > 0 and impls["sae_lens"]["tokens_per_s"] > 0
    assert "speedup_vs_sae_lens" in impls["mechscope"]
    assert "skipped" in impls["sparsify"] or impls["sparsify"]["tokens_per_s"] > 0
    assert "mechscope" in format_bench(rows)


def test_pipeline_bench_smoke(tmp_path):
    from mechscope.apps.bench.pipeline import bench_pipeline, format_pipeline

    r = bench_pipeline(out_dir=tmp_path, shape=dict(n_layer=2, d_model=16, n_head=2, n_ctx=16, d_sae=32, k=2,
                                                    batch=32, steps=1, model_batch=4), n_sites=2)
    for k in ("mechscope", "sae_lens", "mechscope_cache"):
        assert r[f"{k}_tokens_per_s"] > 0
    assert r["speedup_vs_sae_lens"] > 0 and r["multi_site_speedup"] > 0
    assert (tmp_path / "multi" / "results.json").exists() and (tmp_path / "cache" / "manifest.json").exists()
    assert "SAELens runner" in format_pipeline(r)


def test_attribution_memory_bench_one_configuration():
    from mechscope.apps.bench.attribution_memory import format_memory, run_one

    row = run_one("tiny", prompts=3, seq=8, method="ig", d_dict=16, steps=2, chunk=2, step_chunk=1)
    assert row["peak_rss_mib"] >= row["rss_before_mib"] > 0 and row["nodes"] > 1 and row["edges"] > 0
    assert "peak RSS" in format_memory([row])


def test_bench_hierarchy_reports_every_architecture():
    import pytest

    from mechscope.apps.bench.hierarchy import ARCHS, bench_hierarchy, format_hierarchy

    rows = bench_hierarchy(quick=True, archs=("topk", "matryoshka"))
    assert [r["architecture"] for r in rows] == ["topk", "matryoshka"]
    for r in rows:
        assert 0 <= r["absorption_rate"] <= 1 and -1 <= r["child_mmcs"] <= 1
        assert r["l0"] == pytest.approx(2.0, abs=0.25)  # k = 2 active latents (top-k exactly)
    assert "matryoshka" in format_hierarchy(rows) and "jumprelu" in ARCHS
