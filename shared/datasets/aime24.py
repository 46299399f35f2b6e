"""AIME 2024: integer answers 0-999, stored as strings such as "025"."""

from __future__ import annotations

from typing import Any

from shared.datasets.rows import BenchmarkProblem, field, format_number


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        id=str(row.get("id", index)),
        question=field(row, "problem"),
        gold=format_number(field(row, "answer")),
        dataset="aime24",
    )
