"""Evaluation throughput of the embedded model on CPU: problems per minute, per benchmark and mode.

Every on-disk benchmark is evaluated in base mode with the same budget (``--limit`` problems,
``--samples`` k, ``--max-new-tokens``); then the first benchmark in the three modes, so the cost of
the multi-turn baselines is a ratio to base measured side by side in one run. Grading time is
included (one grading worker). Prints a Markdown table for docs/benchmarks.md.

    python benchmarks/evaluation.py --limit 8 --samples 2 --max-new-tokens 256 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shared.core.settings import EvalSettings, InferenceConfig
from shared.datasets import load_benchmarks
from shared.inference import load_backend
from shared.method.evaluation import MODES, BenchmarkSummary, evaluate
from shared.method.grading import Grader

ON_DISK = ["gsm8k", "math500", "aime24", "amc23", "svamp", "gaokao2023en"]


def row(s: BenchmarkSummary, base_seconds: float | None = None) -> str:
    tokens = sum(r.tokens for r in s.results)
    cost = f" | {s.seconds / base_seconds:.2f}x" if base_seconds else " | -"
    return (
        f"| {s.benchmark} | {s.mode} | {s.problems} x {s.samples} | "
        f"{60 * s.problems / s.seconds:.1f} | {tokens / s.seconds:.1f} | "
        f"{s.mean_tokens:.0f} | {100 * s.accuracy:.1f}{cost} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=8, help="Problems per benchmark.")
    parser.add_argument("--samples", type=int, default=2, help="Samples per problem (k).")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (0 = all cores).")
    parser.add_argument("--benchmarks", default=",".join(ON_DISK))
    args = parser.parse_args()

    config = EvalSettings(  # the benchmarks as the data settings find them (docs/data.md)
        benchmarks=args.benchmarks.split(","),
        limit=args.limit,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
    )
    backend = load_backend(InferenceConfig(batch_size=args.batch_size, threads=args.threads))
    benchmarks = load_benchmarks(config)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with Grader(config.grade_timeout_s, 1) as grader:
        base = evaluate(config, backend, grader, benchmarks, ["base"])
        first = {config.benchmarks[0]: benchmarks[config.benchmarks[0]]}
        multi = evaluate(config, backend, grader, first, [m for m in MODES if m != "base"])
    load_after = os.getloadavg()[0]

    print(
        f"model {backend.model_id}, batch {args.batch_size}, threads {args.threads}, "
        f"max_new_tokens {args.max_new_tokens}, temperature {config.temperature}; "
        f"load average {load_before:.1f} -> {load_after:.1f}; "
        f"total {time.perf_counter() - start:.0f} s"
    )
    print(
        "| benchmark | mode | problems x k | problems/min | tokens/s | mean tokens | pass@1 % "
        "| time vs base |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(row(base[0], base[0].seconds))
    for s in base[1:]:
        print(row(s))
    for s in multi:
        print(row(s, base[0].seconds))
    total_problems = sum(s.problems for s in base)
    total_seconds = sum(s.seconds for s in base)
    print(f"base mode, all benchmarks: {60 * total_problems / total_seconds:.1f} problems/min")


if __name__ == "__main__":
    main()
