"""Problems for a run: the synthetic demo set, or a JSONL file in a format of ../shared/datasets.

A problem file is read all or nothing: the first bad line (not UTF-8, not JSON, no question, no
gold answer, a duplicate) raises ``ProblemFileError`` naming the file, the line and the field, and
nothing of the file is submitted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.grading import last_boxed
from shared.runs import ProblemSpec
from shared.synthetic import make_problems


class ProblemFileError(ValueError):
    """A problem file line that cannot become a problem; the message names file, line, field."""


def demo_problems(count: int, seed: int = 0) -> list[ProblemSpec]:
    """The embedded demo: synthetic arithmetic word problems of graded difficulty."""
    return [
        ProblemSpec(p.id, p.question, str(p.answer), "synthetic", f"synthetic:level{p.level}")
        for p in make_problems(count, seed)
    ]


def _question(row: dict[str, Any]) -> tuple[str, str]:
    """(question, field it came from), for every dataset layout."""
    if "Body" in row and "Question" in row:  # SVAMP
        return f"{row['Body']} {row['Question']}".strip(), "Body+Question"
    for field in ("question", "problem"):
        if isinstance(row.get(field), str) and row[field].strip():
            return row[field], field
    return "", "question"


def _gold(row: dict[str, Any]) -> tuple[str, str]:
    """(gold answer, field it came from): GSM8K `#### n`, MATH `\\boxed{}` in the solution,
    AIME strings, AMC/SVAMP floats, LaTeX answers."""
    for field in ("gold", "answer", "Answer"):
        value = row.get(field)
        if value is None or value == "":
            continue
        if isinstance(value, float):  # AMC/SVAMP store integers as floats such as 27.0
            return (str(int(value)) if value.is_integer() else str(value)), field
        text = str(value)
        if "####" in text:  # GSM8K: the gold answer follows the last ####
            return text.rsplit("####", 1)[1].strip().replace(",", ""), field
        return text.strip(), field
    if isinstance(row.get("solution"), str):
        return last_boxed(row["solution"]) or "", "solution"
    return "", "answer"


def read_problem_file(path: Path) -> list[ProblemSpec]:
    """Every problem of a JSONL file, or a ProblemFileError for the first bad line."""
    return parse_problems(Path(path).read_bytes(), str(path))


def parse_problems(raw: bytes, path: str) -> list[ProblemSpec]:
    """Every problem of JSONL bytes; errors name ``path`` (a file, or e.g. a request body)."""
    specs: list[ProblemSpec] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(raw.splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProblemFileError(f"{where}: not UTF-8 (byte {exc.start})") from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProblemFileError(f"{where}: not JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(row, dict):
            raise ProblemFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
        question, qfield = _question(row)
        if not question:
            raise ProblemFileError(f"{where}: field '{qfield}' (or 'problem') missing or empty")
        gold, gfield = _gold(row)
        if not gold:
            raise ProblemFileError(f"{where}: field '{gfield}': no gold answer")
        pid = str(row.get("id", row.get("idx", row.get("ID", f"line{lineno}"))))
        if pid in seen:
            raise ProblemFileError(f"{where}: field 'id': duplicate {pid!r} (line {seen[pid]})")
        seen[pid] = lineno
        key = " ".join(question.split()).lower()
        if key in seen:
            raise ProblemFileError(f"{where}: field '{qfield}': same question as line {seen[key]}")
        seen[key] = lineno
        specs.append(ProblemSpec(pid, question, gold, row.get("dataset", ""), where))
    if not specs:
        raise ProblemFileError(f"{path}: no problems")
    return specs
