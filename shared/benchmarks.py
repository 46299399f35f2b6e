"""Benchmark and training-pool loaders: one small function per dataset format.

Files are JSON Lines in the layout of the Qwen2.5-Math evaluation harness
(``<datasets_dir>/<name>/test.jsonl``); ``load_benchmark`` also reads any other local file or
folder, and a dataset hub id through ``datasets.load_dataset`` when the machine is online.
A bad line raises ``BenchmarkFormatError`` naming the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.grading import last_boxed
from shared.settings import EvalSettings


class BenchmarkProblem(BaseModel):
    """One problem with its gold answer (a string the grader compares against)."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    gold: str
    dataset: str


class BenchmarkFormatError(ValueError):
    """A row that does not have the fields its format needs."""


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


def _field(row: dict[str, Any], name: str) -> Any:
    if name not in row or row[name] is None:
        raise BenchmarkFormatError(f"field '{name}' is missing")
    return row[name]


def gsm8k(row: dict[str, Any], index: int) -> BenchmarkProblem:
    answer = str(_field(row, "answer"))
    if "####" not in answer:
        raise BenchmarkFormatError("field 'answer' has no '#### <number>' line")
    gold = format_number(answer.rsplit("####", 1)[1].strip().replace(",", ""))
    return BenchmarkProblem(
        id=str(row.get("idx", index)), question=_field(row, "question"), gold=gold, dataset="gsm8k"
    )


def math500(row: dict[str, Any], index: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        id=str(row.get("unique_id", index)),
        question=_field(row, "problem"),
        gold=str(_field(row, "answer")).strip(),
        dataset="math500",
    )


def aime24(row: dict[str, Any], index: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        id=str(row.get("id", index)),
        question=_field(row, "problem"),
        gold=format_number(_field(row, "answer")),
        dataset="aime24",
    )


def amc23(row: dict[str, Any], index: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        id=str(row.get("id", index)),
        question=_field(row, "problem"),
        gold=format_number(_field(row, "answer")),
        dataset="amc23",
    )


def svamp(row: dict[str, Any], index: int) -> BenchmarkProblem:
    body = str(_field(row, "Body")).strip()
    # As the harness does: the body is a sentence, so it ends with a full stop.
    body = body if body.endswith(".") else body + "."
    question = f"{body} {str(_field(row, 'Question')).strip()}"
    return BenchmarkProblem(
        id=str(row.get("ID", index)),
        question=question,
        gold=format_number(_field(row, "Answer")),
        dataset="svamp",
    )


def gaokao2023en(row: dict[str, Any], index: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        id=str(index),
        question=_field(row, "question"),
        gold=strip_dollars(str(_field(row, "answer"))),
        dataset="gaokao2023en",
    )


def tabmwp(row: dict[str, Any], index: int) -> BenchmarkProblem:
    """TabMWP: the table goes into the prompt, as in the harness."""
    title = row.get("table_title") or ""
    question = "Read the following table " + (f'regarding "{title}" ' if title else "")
    question += f"and answer a question:\n{_field(row, 'table')}\n{_field(row, 'question')}"
    if row.get("choices"):
        question += f" Please select from the following options: {row['choices']}"
    gold = str(_field(row, "answer")).strip()
    if _field(row, "ans_type") in ("integer_number", "decimal_number"):
        gold = format_number(gold.replace(",", ""))
    return BenchmarkProblem(
        id=str(row.get("pid", index)), question=question, gold=gold, dataset="tabmwp"
    )


FORMATS: dict[str, Callable[[dict[str, Any], int], BenchmarkProblem]] = {
    "gsm8k": gsm8k,
    "math500": math500,
    "aime24": aime24,
    "amc23": amc23,
    "svamp": svamp,
    "gaokao2023en": gaokao2023en,
    "tabmwp": tabmwp,
}


def read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, row) for each non-blank line; a line that is not a JSON object fails."""
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkFormatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise BenchmarkFormatError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, row


def _rows(name: str, path: str | Path | None) -> Iterable[tuple[str, int, dict[str, Any]]]:
    """(where, line, row) from a local file or folder, or from the hub."""
    local = Path(path) if path is not None else EvalSettings().datasets_dir / name
    if local.is_dir():
        nested = local / name / "test.jsonl"
        local = nested if nested.is_file() else local / "test.jsonl"
    if local.is_file():
        for lineno, row in read_jsonl(local):
            yield str(local), lineno, row
    elif path is not None and not Path(path).exists():
        from datasets import load_dataset  # heavy import, and only online users need it

        for index, row in enumerate(load_dataset(str(path), split="test")):
            yield str(path), index + 1, dict(row)
    else:
        raise FileNotFoundError(f"{name}: no test.jsonl at {local}")


def load_benchmark(
    name: str, path: str | Path | None = None, limit: int = 0
) -> list[BenchmarkProblem]:
    """Problems of benchmark ``name`` from ``path`` (file, folder or hub id; default: the
    configured datasets_dir), at most ``limit`` of them (0 = all)."""
    if name == "synthetic":
        return held_out_synthetic(limit or SYNTHETIC_SIZE)
    if name not in FORMATS:
        raise ValueError(f"unknown benchmark {name!r}; known: synthetic, {', '.join(FORMATS)}")
    problems = []
    for where, lineno, row in _rows(name, path):
        try:
            problems.append(FORMATS[name](row, lineno - 1))
        except (BenchmarkFormatError, ValueError, TypeError) as exc:
            raise BenchmarkFormatError(f"{where}:{lineno}: {name}: {exc}") from exc
        if limit and len(problems) >= limit:
            break
    return problems


# The held-out synthetic set: drawn with a seed no run uses for its training problems (runs draw
# theirs with the run seed, small integers), so it measures the demo model on unseen problems.
SYNTHETIC_SEED = 1_000_003
SYNTHETIC_SIZE = 200


def held_out_synthetic(count: int) -> list[BenchmarkProblem]:
    from shared.synthetic import make_problems

    return [
        BenchmarkProblem(id=p.id, question=p.question, gold=str(p.answer), dataset="synthetic")
        for p in make_problems(count, seed=SYNTHETIC_SEED)
    ]


def _key(text: str) -> str:
    return " ".join(text.split())


def default_training_pool() -> Path:
    return EvalSettings().datasets_dir.parent / "train" / "math_test_full.jsonl"


def load_training_pool(
    path: str | Path | None = None, exclude: Iterable[str] | None = None, limit: int = 0
) -> list[BenchmarkProblem]:
    """The MATH training pool: gold = the last ``\\boxed{}`` of ``solution``.

    ``exclude`` holds problem texts that must not leak into training (matched with whitespace
    collapsed); None means the MATH500 benchmark problems.
    """
    path = Path(path) if path is not None else default_training_pool()
    if exclude is None:
        exclude = [p.question for p in load_benchmark("math500")]
    excluded = {_key(text) for text in exclude}
    problems = []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}: math"
        try:
            problem, solution = str(_field(row, "problem")), str(_field(row, "solution"))
        except BenchmarkFormatError as exc:
            raise BenchmarkFormatError(f"{where}: {exc}") from exc
        gold = last_boxed(solution)
        if not gold:
            raise BenchmarkFormatError(f"{where}: field 'solution' has no \\boxed{{}} answer")
        if _key(problem) in excluded:
            continue
        problems.append(
            BenchmarkProblem(
                id=f"math-{row.get('idx', lineno - 1)}", question=problem, gold=gold, dataset="math"
            )
        )
        if limit and len(problems) >= limit:
            break
    return problems
