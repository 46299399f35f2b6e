"""A dataset row becomes a ``BenchmarkProblem``: the helpers every format module shares."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.datasets.jsonl import DatasetFormatError


class BenchmarkProblem(BaseModel):
    """One problem with its gold answer (a string the grader compares against)."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    gold: str
    dataset: str


def field(row: dict[str, Any], name: str) -> Any:
    """``row[name]``, or a DatasetFormatError naming the missing field."""
    if name not in row or row[name] is None:
        raise DatasetFormatError(f"field '{name}' is missing")
    return row[name]


def format_number(value: float | int | str) -> str:
    """27.0 -> "27", 2.5 -> "2.5", "025" -> "25": gold numbers as a model would write them."""
    if isinstance(value, str):
        text = value.strip()
        return str(int(text)) if text.isdigit() else text
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def strip_dollars(answer: str) -> str:
    """Gaokao answers come as "$\\frac{1}{2}$"; the grader wants the LaTeX inside."""
    answer = answer.strip()
    return answer[1:-1].strip() if len(answer) > 1 and answer[0] == answer[-1] == "$" else answer
