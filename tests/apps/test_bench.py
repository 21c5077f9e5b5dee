"""The training benchmark against SAELens and sparsify, on tiny shapes."""

from mechscope.apps.bench.train import bench_train, format_bench


def test_bench_smoke():
    rows = bench_train(steps=1, d_in=16, d_sae=64, k=4, batch=32)
    impls = {r["impl"]: r for r in rows}
    assert impls["mechscope"]["tokens_per_s"] > 0 and impls["sae_lens"]["tokens_per_s"] > 0
    assert "speedup_vs_sae_lens" in impls["mechscope"]
    assert "skipped" in impls["sparsify"] or impls["sparsify"]["tokens_per_s"] > 0
    assert "mechscope" in format_bench(rows)
