"""The benchmark runs and reports sane rows; the CPU peak-memory tracker counts what it should."""

import torch

from mechscope.kernels.bench import bench_kernels, format_table
from mechscope.kernels.memory import PeakMemory


def test_bench_quick_smoke():
    rows = bench_kernels(shapes=[(64, 32, 256, 8)], repeats=1, quick=True, device="cpu")
    assert {(r["impl"], r["pass_"]) for r in rows} == {
        (i, p) for i in ("dense", "reference") for p in ("encode", "train")}
    for r in rows:
        assert r["median_s"] > 0 and r["peak_mib"] > 0
        if r["impl"] == "dense":
            assert r["speedup"] == 1.0 and r["mem_ratio"] == 1.0
    # the sparse training step never holds the dense [n, d_sae] gradient the baseline needs
    train = {r["impl"]: r for r in rows if r["pass_"] == "train"}
    assert train["reference"]["peak_mib"] < train["dense"]["peak_mib"]
    table = format_table(rows)
    assert "reference only" in table and "speedup" in table


def test_peak_memory_tracker():
    with PeakMemory() as pm:
        a = torch.empty(1000, 250)  # 1 MB
        b = a.view(-1)  # a view: no new storage
        del a, b
        c = torch.empty(500, 250)  # 0.5 MB, after the first was freed
        d = c + 1  # 0.5 MB more
    assert pm.peak == 1_000_000
    assert pm.current == 1_000_000
    del c, d
    assert pm.current == 0
