"""Gaokao 2023 (English): answers in dollar-delimited LaTeX."""

from __future__ import annotations

from typing import Any

from shared.datasets.rows import BenchmarkProblem, field, strip_dollars


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        id=str(index),
        question=field(row, "question"),
        gold=strip_dollars(str(field(row, "answer"))),
        dataset="gaokao2023en",
    )
