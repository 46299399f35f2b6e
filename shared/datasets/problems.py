"""Problems for a run: the synthetic demo set, or a JSONL file in a format of ../shared/datasets.

A problem file is read all or nothing: the first bad line (not UTF-8, not JSON, no question, no
gold answer, a duplicate) raises ``DatasetFormatError`` naming the file, the line and the field,
and nothing of the file is submitted. A row in a known format (by its ``dataset`` field or by the
fields only that format has) is read by that format's module; any other row needs a ``question``
(or ``problem``) and a ``gold`` (or ``answer``) field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.core.runs import ProblemSpec
from shared.datasets import detect, parse_row
from shared.datasets.jsonl import DatasetFormatError, read_jsonl
from shared.datasets.rows import format_number
from shared.datasets.synthetic import make_problems


def demo_problems(
    count: int, seed: int = 0, levels: tuple[int, ...] = (1, 2, 3, 4, 5)
) -> list[ProblemSpec]:
    """The embedded demo: synthetic arithmetic word problems of graded difficulty."""
    return [
        ProblemSpec(
            p.id, p.question, str(p.answer), "synthetic", f"synthetic:level{p.level}", p.solution
        )
        for p in make_problems(count, seed, levels)
    ]


def plain_question(row: dict[str, Any]) -> str:
    """The ``question`` (or ``problem``) field of a row in no known format."""
    question = next((row[f] for f in ("question", "problem") if isinstance(row.get(f), str)), "")
    if not question.strip():
        raise DatasetFormatError("field 'question' (or 'problem') missing or empty")
    return question


def question_and_gold(row: dict[str, Any], index: int) -> tuple[str, str, str]:
    """(question, gold, dataset) of a row: by its format's module, else the plain fields."""
    if name := detect(row):
        problem = parse_row(name, row, index)
        return problem.question, problem.gold, name
    question = plain_question(row)
    gold = next((row[f] for f in ("gold", "answer", "Answer") if row.get(f) not in (None, "")), "")
    if gold == "":
        raise DatasetFormatError("field 'answer': no gold answer")
    return question, format_number(gold) if isinstance(gold, float) else str(gold).strip(), ""


def read_problem_file(path: Path) -> list[ProblemSpec]:
    """Every problem of a JSONL file, or a DatasetFormatError for the first bad line."""
    return parse_problems(Path(path).read_bytes(), str(path))


def parse_problems(raw: bytes, path: str) -> list[ProblemSpec]:
    """Every problem of JSONL bytes; errors name ``path`` (a file, or e.g. a request body)."""
    specs: list[ProblemSpec] = []
    seen: dict[str, int] = {}
    for lineno, row in read_jsonl(raw, path):
        where = f"{path}:{lineno}"
        try:
            question, gold, dataset = question_and_gold(row, lineno - 1)
        except (DatasetFormatError, ValueError, TypeError) as exc:
            raise DatasetFormatError(f"{where}: {exc}") from None
        pid = str(row.get("id", row.get("idx", row.get("ID", f"line{lineno}"))))
        if pid in seen:
            raise DatasetFormatError(f"{where}: field 'id': duplicate {pid!r} (line {seen[pid]})")
        seen[pid] = lineno
        key = " ".join(question.split()).lower()
        if key in seen:
            raise DatasetFormatError(
                f"{where}: field 'question': same question as line {seen[key]}"
            )
        seen[key] = lineno
        solution = row.get("solution") if isinstance(row.get("solution"), str) else ""
        specs.append(ProblemSpec(pid, question, gold, row.get("dataset", dataset), where, solution))
    if not specs:
        raise DatasetFormatError(f"{path}: no problems")
    return specs
