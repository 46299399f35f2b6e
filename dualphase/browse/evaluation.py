"""Evaluation: per benchmark, the problems M2 fixed and broke against M0.

A problem's score is the share of its samples that are right (the report's per-problem pass@1);
M2 fixed a problem when its share is higher than M0's, broke it when lower. These are the
discordant pairs the report's paired test counts ("M2 - M0": McNemar with one sample per
problem). Both models are in their base mode; M0 is the base checkpoint, M2 the run's M2
checkpoint.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from shared.core.db import CheckpointRow, EvalSampleRow
from shared.core.messages import BASE_CHECKPOINT_ID


@dataclass
class Pair:
    problem_id: str
    m0: float  # share of M0's samples that are right
    m2: float


@dataclass
class BenchmarkPairs:
    benchmark: str
    problems: int  # evaluated by both models
    m0_mean: float
    m2_mean: float
    fixed: list[Pair] = field(default_factory=list)
    broke: list[Pair] = field(default_factory=list)


def m2_checkpoint(session: Session, run_id: str) -> str | None:
    return session.scalar(
        select(CheckpointRow.id)
        .where(
            CheckpointRow.run_id == run_id,
            CheckpointRow.stage == "M2",
            CheckpointRow.status == "ready",
        )
        .order_by(CheckpointRow.created_at.desc())
    )


def discordant(
    session: Session, run_id: str, m2_id: str, benchmark: str | None = None
) -> list[BenchmarkPairs]:
    """Per benchmark (or only ``benchmark``), M0's and M2's per-problem scores, aggregated in
    SQL, and their pairs."""
    right = func.sum(case((EvalSampleRow.correct, 1), else_=0))
    only = [EvalSampleRow.benchmark == benchmark] if benchmark else []
    rows = session.execute(
        select(
            EvalSampleRow.benchmark,
            EvalSampleRow.checkpoint_id,
            EvalSampleRow.problem_id,
            right,
            func.count(),
        )
        .where(
            EvalSampleRow.run_id == run_id,
            EvalSampleRow.mode == "base",
            EvalSampleRow.checkpoint_id.in_([BASE_CHECKPOINT_ID, m2_id]),
            *only,
        )
        .group_by(EvalSampleRow.benchmark, EvalSampleRow.checkpoint_id, EvalSampleRow.problem_id)
    )
    scores: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for bench, checkpoint, problem_id, n_right, n in rows:
        scores[bench][checkpoint][problem_id] = n_right / n
    out = []
    for bench in sorted(scores):
        m0, m2 = scores[bench][BASE_CHECKPOINT_ID], scores[bench][m2_id]
        pairs = [Pair(p, m0[p], m2[p]) for p in sorted(set(m0) & set(m2))]
        if not pairs:
            continue
        out.append(
            BenchmarkPairs(
                bench,
                len(pairs),
                sum(p.m0 for p in pairs) / len(pairs),
                sum(p.m2 for p in pairs) / len(pairs),
                [p for p in pairs if p.m2 > p.m0],
                [p for p in pairs if p.m2 < p.m0],
            )
        )
    return out


def answers(
    session: Session, run_id: str, benchmark: str, m2_id: str, problem_ids: list[str]
) -> dict[tuple[str, str], list[EvalSampleRow]]:
    """(problem, "M0" or "M2") -> that model's samples of the problem, in sample order."""
    rows = session.scalars(
        select(EvalSampleRow)
        .where(
            EvalSampleRow.run_id == run_id,
            EvalSampleRow.benchmark == benchmark,
            EvalSampleRow.mode == "base",
            EvalSampleRow.checkpoint_id.in_([BASE_CHECKPOINT_ID, m2_id]),
            EvalSampleRow.problem_id.in_(problem_ids),
        )
        .order_by(EvalSampleRow.problem_id, EvalSampleRow.sample)
    )
    out: dict[tuple[str, str], list[EvalSampleRow]] = defaultdict(list)
    for row in rows:
        out[(row.problem_id, "M0" if row.checkpoint_id == BASE_CHECKPOINT_ID else "M2")].append(row)
    return out
