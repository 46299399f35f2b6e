"""MATH (the training pool): the gold answer is the last ``\\boxed{}`` of the solution."""

from __future__ import annotations

from typing import Any

from shared.datasets.jsonl import DatasetFormatError
from shared.datasets.rows import BenchmarkProblem, field, last_boxed


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    problem, solution = str(field(row, "problem")), str(field(row, "solution"))
    gold = last_boxed(solution)
    if not gold:
        raise DatasetFormatError("field 'solution' has no \\boxed{} answer")
    return BenchmarkProblem(
        id=f"math-{row.get('idx', index)}",
        question=problem,
        gold=gold,
        dataset="math",
        solution=solution,
    )
