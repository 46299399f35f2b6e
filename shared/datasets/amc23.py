"""AMC 2023: answers stored as floats such as 27.0. The hub's copy (math-ai/amc23) has the problem
text in ``question`` only; the harness file has it in both ``problem`` and ``question``."""

from __future__ import annotations

from typing import Any

from shared.datasets.rows import BenchmarkProblem, field, format_number


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        id=str(row.get("id", index)),
        question=field(row, "problem" if "problem" in row else "question"),
        gold=format_number(field(row, "answer")),
        dataset="amc23",
    )
