"""MATH500: the 500 MATH test problems of "Let's Verify Step by Step"; LaTeX answers."""

from __future__ import annotations

from typing import Any

from shared.datasets.rows import BenchmarkProblem, field


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        id=str(row.get("unique_id", index)),
        question=field(row, "problem"),
        gold=str(field(row, "answer")).strip(),
        dataset="math500",
    )
