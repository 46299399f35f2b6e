"""Problems for a run: drawn from the configured pool (``run.pool``: the synthetic demo set, or a
training pool of ``sources``) with the run seed, or read from a user's JSONL problem file.

A problem file is read all or nothing: the first bad line (not UTF-8, not JSON, no question, no
gold answer, a duplicate) raises ``DatasetFormatError`` naming the file, the line and the field,
and nothing of the file is submitted. A row in a known format (by its ``dataset`` field or by the
fields only that format has) is read by that format's module; any other row needs a ``question``
(or ``problem``) and a ``gold`` (or ``answer``) field.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.runs import ProblemSpec
from shared.core.settings import Settings
from shared.datasets import POOLS, detect, load_pool, parse_row
from shared.datasets.jsonl import DatasetFormatError, read_jsonl
from shared.datasets.rows import format_number, text_key
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


@dataclass(frozen=True)
class PoolDraw:
    """What a run without a problem file draws, before anything is loaded (for a dry run)."""

    pool: str  # run.pool
    hub_id: str | None  # None for the synthetic pool, made here
    config: str | None
    split: str | None
    revision: str | None
    phase1: int
    phase2: int
    seed: int


def pool_draw(
    settings: Settings,
    phase1: int | None = None,
    phase2: int | None = None,
    seed: int | None = None,
) -> PoolDraw:
    """The pool, its dataset id and revision, and the counts a run draws (the settings' run
    section, or the given counts and seed); nothing is loaded."""
    run = settings.run
    source = POOLS.get(run.pool)
    return PoolDraw(
        run.pool,
        source.hub_id if source else None,
        source.config if source else None,
        source.split if source else None,
        source.revision if source else None,
        run.phase1_problems if phase1 is None else phase1,
        run.phase2_problems if phase2 is None else phase2,
        run.seed if seed is None else seed,
    )


def draw_problems(
    settings: Settings,
    phase1: int | None = None,
    phase2: int | None = None,
    seed: int | None = None,
) -> list[ProblemSpec]:
    """The run's problems, phase 1's first: ``phase1 + phase2`` of the pool (``run.pool``),
    chosen with the run seed (the same seed, the same problems), each with its reference solution
    where the pool has one. A pool smaller than that is a ValueError naming it."""
    draw = pool_draw(settings, phase1, phase2, seed)
    count = draw.phase1 + draw.phase2
    if draw.hub_id is None:
        return demo_problems(count, draw.seed, tuple(settings.eval.synthetic_levels))
    pool = load_pool(draw.pool, settings.data)
    if count > len(pool):
        raise ValueError(
            f"run.pool {draw.pool} ({draw.hub_id}) has {len(pool)} problems; the run asks for "
            f"{draw.phase1} + {draw.phase2}"
        )
    source = f"{draw.hub_id}@{draw.revision[:7]}"
    return [
        ProblemSpec(p.id, p.question, p.gold, draw.pool, source, p.solution)
        for p in random.Random(draw.seed).sample(pool, count)
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
        key = text_key(question)
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
