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
    solution: str = ""  # a reference solution, where the dataset has one (the pools)


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


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces matched); None if there is none.

    Like the harness, ``\\boxed 5`` (no brace) gives the text up to the next ``$``.
    """
    start = text.rfind("boxed")
    if start < 0:
        return None
    rest = text[start + len("boxed") :]
    if not rest.startswith("{"):
        return rest.split("$")[0].strip()
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i]
    return rest[1:]  # unbalanced: the harness keeps everything after the opening brace


def text_key(text: str) -> str:
    """The key under which two texts are the same one: case and spacing do not count (a
    duplicate question of a pool, a repeated solution)."""
    return " ".join(text.lower().split())
