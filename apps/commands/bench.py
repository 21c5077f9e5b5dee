"""``mechscope bench``: benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import argparse

from mechscope.apps.cli import command

BENCHES = ("capture", "kernels", "train", "pipeline", "routes", "attribution", "hierarchy")


def _bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=BENCHES, help="what to benchmark")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run with tiny shapes")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (medians are reported)")
    p.add_argument("--shape", choices=["gpt2-small", "tiny"], default=None,
                   help="attribution: time and peak memory at this model shape (SAEs at every "
                        "resid_post) instead of the induction comparison")
    p.add_argument("--prompts", type=int, nargs="+", default=[8, 32], help="attribution --shape: prompt counts")
    p.add_argument("--seq", type=int, default=64, help="attribution --shape: tokens per prompt")
    p.add_argument("--chunk", type=int, default=2, help="attribution --shape: prompts per pass")
    p.add_argument("--step-chunk", type=int, default=5,
                   help="attribution --shape: IG points (steps; targets x steps for edges) per pass")
    p.add_argument("--steps", type=int, default=None,
                   help="attribution --shape: IG steps (default 10); pipeline: SAE steps of every case "
                        "(default 16; --quick 3)")
    p.add_argument("--methods", nargs="+", choices=["atp", "ig"], default=["atp", "ig"],
                   help="attribution --shape: node attribution methods to measure")
    p.add_argument("--edges", action=argparse.BooleanOptionalAction, default=None,
                   help="attribution --shape: also trace edges between kept nodes (default: with ig only)")
    p.add_argument("--d-dict", type=int, default=6144, help="attribution --shape: SAE width at every site")
    p.add_argument("--node-threshold", type=float, default=0.02,
                   help="attribution --shape: nodes kept at this fraction of the largest |score|")
    p.add_argument("--buffer", type=int, default=None, help="pipeline: shuffle buffer of both sides, in batches (default 4)")


@command("bench", "Benchmarks that print ratios against a baseline measured in the same run.", _bench_options)
def bench_cmd(args: argparse.Namespace) -> int:
    import torch

    print(f"environment: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={'yes' if torch.cuda.is_available() else 'no'}")
    if args.which == "capture":
        from mechscope.apps.bench.capture import bench_capture, format_capture

        print(format_capture(bench_capture(repeats=args.repeats, quick=args.quick)))
    elif args.which == "kernels":
        from mechscope.kernels.bench import bench_kernels, format_table

        print(format_table(bench_kernels(repeats=args.repeats, quick=args.quick)))
    elif args.which == "train":
        from mechscope.apps.bench.train import bench_train, format_bench as format_train

        print(format_train(bench_train(quick=args.quick)))
    elif args.which == "pipeline":
        from mechscope.apps.bench.pipeline import bench_pipeline, format_pipeline

        shape = {k: v for k, v in (("steps", args.steps), ("shuffle", args.buffer)) if v}
        print(format_pipeline(bench_pipeline(quick=args.quick, repeats=args.repeats, shape=shape)))
    elif args.which == "routes":
        from mechscope.apps.bench.routes import bench_routes, format_routes_bench

        print(format_routes_bench(bench_routes(quick=args.quick)))
    elif args.which == "hierarchy":
        from mechscope.apps.bench.hierarchy import bench_hierarchy, format_hierarchy

        print(format_hierarchy(bench_hierarchy(quick=args.quick)))
    elif args.shape is not None:
        from mechscope.apps.bench.attribution_memory import bench_attribution_memory, format_memory

        print(format_memory(bench_attribution_memory(
            args.shape, args.prompts, args.seq, args.methods, args.d_dict, args.steps or 10, args.chunk,
            args.step_chunk, args.node_threshold, args.edges)))
    else:
        from mechscope.apps.bench.attribution import bench_attribution, format_bench

        print(format_bench(bench_attribution(quick=args.quick)))
    return 0
