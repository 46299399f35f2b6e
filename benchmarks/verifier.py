"""Verifier throughput and latency on realistic responses built from the real benchmark files.

Responses: each problem's reference solution ending in its boxed answer (right) and the same
text with another problem's answer in the box (wrong), from GSM8K, MATH500, AIME24, AMC23, SVAMP
and Gaokao2023en, shuffled; plus a few pathological answers (10^{10^{10^{10}}}, deep braces).
Grading runs in ONE worker process (one core) with the hard time limit; the in-process figure,
taken in the same run, shows what the process boundary costs.

    python benchmarks/verifier.py --items 3000
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from shared.datasets import dataset_rows, load_benchmark
from shared.method.grading import Grader, extract_answer, is_equivalent

PATHOLOGICAL = ["\\boxed{10^{10^{10^{10}}}}", "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}"]


def realistic_items(n: int, seed: int) -> list[tuple[str, str]]:
    """(response, gold) pairs: half right, half wrong, across the benchmark formats."""
    rng = random.Random(seed)
    items = []
    for name in ["gsm8k", "math500", "aime24", "amc23", "svamp", "gaokao2023en"]:
        rows = dataset_rows(name)  # the data settings' copies (docs/data.md)
        problems = load_benchmark(name)
        golds = [p.gold for p in problems if p.gold]
        for row, problem in zip(rows, problems, strict=True):
            if not problem.gold:
                continue
            body = row.get("solution") or row.get("answer") if name != "svamp" else row["Equation"]
            body = str(body).split("####")[0].split("\\boxed")[0]  # reasoning without the answer
            wrong = rng.choice([g for g in rng.sample(golds, 5) if g != problem.gold] or ["0"])
            for answer in (problem.gold, wrong):
                items.append(
                    (f"{body}\nSo the final answer is $\\boxed{{{answer}}}$.", problem.gold)
                )
    rng.shuffle(items)
    return items[:n]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): a rate per core that does not depend
    on what else the shared machine is running."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    items = realistic_items(args.items, args.seed)

    start, cpu_each = time.perf_counter(), []
    for response, gold in items:
        cpu = time.process_time()
        is_equivalent(extract_answer(response), gold, int(args.timeout))
        cpu_each.append(time.process_time() - cpu)
    in_process = len(items) / (time.perf_counter() - start)
    in_process_cpu = len(items) / sum(cpu_each)

    with Grader(timeout_s=args.timeout, workers=1) as grader:
        pid = grader._workers[0].process.pid
        start, cpu, parent_cpu = time.perf_counter(), cpu_seconds(pid), time.process_time()
        grades = grader.grade_many(items)
        pooled = len(items) / (time.perf_counter() - start)
        worker_cpu = cpu_seconds(pid) - cpu
        parent_cpu = time.process_time() - parent_cpu
        bad = grader.grade_many([(p, "5") for p in PATHOLOGICAL])

    seconds = [g.seconds for g in grades]
    ms = {q: 1000 * percentile(seconds, q) for q in (0.5, 0.99)}
    print(
        f"items: {len(items)} ({sum(g.correct for g in grades)} graded right), "
        f"hard limit {args.timeout} s, 1 worker process, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print("| measure | value |\n|---|---|")
    print(f"| verdicts per worker CPU-second (one core) | {len(items) / worker_cpu:.0f} |")
    print(
        f"| parent CPU per verdict (extraction, pipes) | {1e6 * parent_cpu / len(items):.0f} us |"
    )
    print(f"| verdicts/s wall clock, 1 worker process | {pooled:.0f} |")
    print(
        f"| in-process, no time limit: per CPU-second / wall | {in_process_cpu:.0f} / "
        f"{in_process:.0f} |"
    )
    print(f"| latency (wall, through the pool) p50 | {ms[0.5]:.2f} ms |")
    print(f"| latency (wall, through the pool) p99 | {ms[0.99]:.2f} ms |")
    print(f"| latency max | {1000 * max(seconds):.1f} ms |")
    print(
        f"| CPU time per item in-process p50 / p99 | {1000 * percentile(cpu_each, 0.5):.3f} / "
        f"{1000 * percentile(cpu_each, 0.99):.2f} ms |"
    )
    print(f"| errors (timeouts, dead workers) | {sum(bool(g.error) for g in grades)} |")
    for answer, grade in zip(PATHOLOGICAL, bad, strict=True):
        print(
            f"| pathological `{answer[:28]}...` | {grade.seconds:.2f} s, "
            f"error={grade.error or 'none'}, correct={grade.correct} |"
        )


if __name__ == "__main__":
    main()
