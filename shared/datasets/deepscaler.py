"""DeepScaleR-Preview (the paper's training pool): competition problems with a final answer and,
for most, a reference solution."""

from __future__ import annotations

from typing import Any

from shared.datasets.rows import BenchmarkProblem, field


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    answer = str(field(row, "answer")).strip()
    if not answer:
        raise ValueError("field 'answer' is empty")
    return BenchmarkProblem(
        id=f"deepscaler-{index}",
        question=str(field(row, "problem")),
        gold=answer,
        dataset="deepscaler",
        solution=str(row.get("solution") or ""),
    )
