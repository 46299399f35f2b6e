"""SVAMP: a body and a question, joined as the harness joins them."""

from __future__ import annotations

from typing import Any

from shared.datasets.rows import BenchmarkProblem, field, format_number


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    body = str(field(row, "Body")).strip()
    # As the harness does: the body is a sentence, so it ends with a full stop.
    body = body if body.endswith(".") else body + "."
    question = f"{body} {str(field(row, 'Question')).strip()}"
    return BenchmarkProblem(
        id=str(row.get("ID", index)),
        question=question,
        gold=format_number(field(row, "Answer")),
        dataset="svamp",
    )
