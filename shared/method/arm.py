"""The arm: the base model fine-tuned on given solutions, trained and evaluated like M1 and M2.

Internally its stage is ``oracle`` (shards, checkpoints, messages); every label a person reads
names its source instead (``arm_label``):

- the problems' reference solutions (``problems.solution``): "oracle (reference solutions)", a
  positive control: how far training on known-good solutions moves the metric;
- a solutions file (``sampler.arm_solutions``): "distilled (<teacher>)", the paper's distilled
  baseline, the base model fine-tuned on a stronger model's solutions. The file is JSON Lines, one
  solution per row: ``solution``, the run's problem it solves by ``problem_id`` (or, where the id
  is not one of the run's, by ``question``), and optionally ``teacher``. ``dualphase distill``
  writes one with a teacher model (``distill``). Only solutions graded correct against the
  problem's gold answer (``shared.method.grading.Grader``) train; the same text twice for one
  problem trains once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.messages import SamplingParams
from shared.datasets.jsonl import DatasetFormatError, read_jsonl
from shared.datasets.rows import text_key
from shared.inference import Backend
from shared.method.grading import Grader

REFERENCE_LABEL = "oracle (reference solutions)"
UNNAMED_TEACHER = "teacher not named"
# RuleCount rows of the arm (``sampler_svc.balance.store_counts``): prefix, then a count's name.
COUNTS_PREFIX = "arm:"
TEACHER_COUNT = "teacher:"  # arm:teacher:<name>: rows of that teacher that train


def arm_label(sampler: Mapping[str, Any], teachers: Sequence[str] = ()) -> str:
    """The report's name of the arm of a run with these sampler settings (its config snapshot):
    by its source. ``teachers``: the teachers of the rows that trained, where known."""
    file = str(sampler.get("arm_solutions") or "")
    if not file:
        return REFERENCE_LABEL
    names = list(teachers) or [sampler.get("arm_teacher") or Path(file).name]
    return f"distilled ({', '.join(names)})"


@dataclass(frozen=True)
class ProblemRef:
    """A problem of the run, as the arm needs it."""

    problem_id: str
    question: str
    gold: str
    solution: str = ""  # its reference solution, if it has one


@dataclass(frozen=True)
class ArmRow:
    """One solution the arm trains on."""

    problem_id: str
    question: str
    solution: str
    sample_id: str
    teacher: str = ""


@dataclass(frozen=True)
class FileSolution:
    problem_id: str
    question: str
    solution: str
    teacher: str
    where: str  # file:line


def read_solutions(path: str | Path, teacher: str = "") -> list[FileSolution]:
    """Every row of a solutions file; a row without a solution, or naming no problem, raises a
    DatasetFormatError naming the file, line and field. ``teacher``: for rows that name none."""
    rows = []
    for lineno, row in read_jsonl(Path(path)):
        where = f"{path}:{lineno}"
        solution = row.get("solution")
        if not isinstance(solution, str) or not solution.strip():
            raise DatasetFormatError(f"{where}: field 'solution' missing or empty")
        problem_id, question = row.get("problem_id"), row.get("question")
        if problem_id in (None, "") and not (isinstance(question, str) and question.strip()):
            raise DatasetFormatError(f"{where}: field 'problem_id' (or 'question') missing")
        name = row.get("teacher") if isinstance(row.get("teacher"), str) else ""
        rows.append(
            FileSolution(
                "" if problem_id is None else str(problem_id),
                question if isinstance(question, str) else "",
                solution,
                name or teacher or UNNAMED_TEACHER,
                where,
            )
        )
    return rows


def reference_rows(
    problems: Sequence[ProblemRef], drop: Collection[str]
) -> tuple[list[ArmRow], dict[str, tuple[int, int]]]:
    """The reference solution of every problem that has one, less the contaminated ones; and
    the counts (left out, kept) of the report."""
    with_one = [p for p in problems if p.solution]
    rows = [
        ArmRow(p.problem_id, p.question, p.solution, f"{p.problem_id}:oracle")
        for p in with_one
        if p.problem_id not in drop
    ]
    counts = {
        "reference": (len(problems) - len(with_one), len(with_one)),
        "decontam": (len(with_one) - len(rows), len(rows)),
    }
    return rows, counts


def file_rows(
    problems: Sequence[ProblemRef],
    solutions: Sequence[FileSolution],
    drop: Collection[str],
    grader: Grader,
) -> tuple[list[ArmRow], dict[str, tuple[int, int]]]:
    """The file's solutions that solve a problem of the run and are graded correct against its
    gold answer, less the contaminated problems and repeated texts; and the counts (left out,
    kept) of each step, and of the teachers of the rows kept."""
    by_id = {p.problem_id: p for p in problems}
    by_question = {text_key(p.question): p for p in problems}
    matched = []
    for s in solutions:
        problem = by_id.get(s.problem_id) or by_question.get(text_key(s.question))
        if problem is not None:
            matched.append((problem, s))
    grades = grader.grade_many([(s.solution, p.gold) for p, s in matched])
    correct = [(p, s) for (p, s), g in zip(matched, grades, strict=True) if g.correct]
    clean = [(p, s) for p, s in correct if p.problem_id not in drop]
    rows: list[ArmRow] = []
    seen: set[tuple[str, str]] = set()
    per_problem: dict[str, int] = {}
    for p, s in clean:
        if (p.problem_id, text_key(s.solution)) in seen:
            continue
        seen.add((p.problem_id, text_key(s.solution)))
        i = per_problem[p.problem_id] = per_problem.get(p.problem_id, -1) + 1
        rows.append(
            ArmRow(p.problem_id, p.question, s.solution, f"{p.problem_id}:arm:{i}", s.teacher)
        )
    counts = {
        "matched": (len(solutions) - len(matched), len(matched)),
        "graded": (len(matched) - len(correct), len(correct)),
        "decontam": (len(correct) - len(clean), len(clean)),
        "distinct": (len(clean) - len(rows), len(rows)),
    }
    for name in dict.fromkeys(r.teacher for r in rows):
        counts[f"{TEACHER_COUNT}{name}"[:60]] = (0, sum(r.teacher == name for r in rows))
    return rows, counts


@dataclass(frozen=True)
class Distilled:
    """What ``distill`` made of a set of problems: the rows to write, and its counts."""

    rows: list[dict[str, Any]]
    samples: int  # generated
    correct: int  # graded correct
    truncated: int  # correct but cut at the token budget (left out)


def distill(
    backend: Backend,
    grader: Grader,
    problems: Sequence[ProblemRef],
    params: SamplingParams,
    system: str,
    teacher: str,
    keep: int,
) -> Distilled:
    """Sample ``params.n`` solutions of each problem from the teacher ``backend`` (one batched
    call), grade them against the gold answers, and keep up to ``keep`` distinct correct ones
    per problem that ended on their own (a solution cut at the token budget never trains)."""
    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": p.question}]
        for p in problems
    ]
    results = backend.chat(conversations, params)
    samples = [(p, c) for p, r in zip(problems, results, strict=True) for c in r.completions]
    grades = grader.grade_many([(c.text, p.gold) for p, c in samples])
    rows: list[dict[str, Any]] = []
    kept: dict[str, set[str]] = {}
    correct = truncated = 0
    for (p, c), grade in zip(samples, grades, strict=True):
        if not grade.correct:
            continue
        correct += 1
        if c.finish_reason != "stop":
            truncated += 1
            continue
        texts = kept.setdefault(p.problem_id, set())
        if len(texts) >= keep or text_key(c.text) in texts:
            continue
        texts.add(text_key(c.text))
        rows.append(
            {
                "problem_id": p.problem_id,
                "question": p.question,
                "gold": p.gold,
                "solution": c.text,
                "teacher": teacher,
                "extracted": grade.extracted,
            }
        )
    return Distilled(rows, len(samples), correct, truncated)
