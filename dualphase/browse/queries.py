"""The SQL behind the browser's pages: runs, a filtered page of a run's problems, one problem.

Everything is read per page: the problem list is filtered, counted and cut (LIMIT/OFFSET) in the
database, and only the page's problems have their verdicts read. The filters are portable
between SQLite and PostgreSQL: ``failed_rules`` is a JSON list, matched as text (its JSON element,
quotes included, inside the column cast to text), which both store as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Text, cast, exists, func, select
from sqlalchemy.orm import Session

from dualphase.browse.membership import Membership, Placement
from dualphase.paper import shorten
from dualphase.run_story import rule_rejections
from shared.core.db import AttemptCount, GenerationRow, Problem, Run, VerdictRow
from shared.core.messages import PHASE1_CATEGORIES

PAGE_SIZE = 50
CATEGORIES = get_args(PHASE1_CATEGORIES)
PHASE1_TURNS = ("solve", "review", "rewrite")


class ProblemFilter(BaseModel):
    """The query string of the problem list. Empty means "any". The sample filters (category,
    verdict, rule) hold together for one sample: a problem is listed when one of its samples is,
    say, WR and rejected by ``explicit_answer``."""

    phase: Literal["", "1", "2"] = ""
    category: Literal["", PHASE1_CATEGORIES] = ""
    verdict: Literal["", "accepted", "rejected"] = ""
    rule: str = ""
    kept: Literal["", "yes", "no"] = ""
    stage: str = Field("", description="Shard stage: kept means kept in this shard.")
    q: str = Field("", description="Text in the question (case-insensitive).")
    page: int = Field(1, ge=1)

    def query(self, **change: Any) -> dict[str, Any]:
        """The non-empty parameters, with ``change`` applied: for links that keep the filters."""
        values = {**self.model_dump(), **change}
        return {k: v for k, v in values.items() if v not in ("", None)}


@dataclass
class RunLine:
    id: str
    status: str
    created_at: datetime
    model: str
    problems: int


@dataclass
class ProblemLine:
    problem_id: str
    phase: int
    dataset: str
    question: str
    category: str = ""  # of the phase-1 dialogue
    samples: int = 0
    accepted: int = 0
    rules: set[str] = field(default_factory=set)  # every rule that rejected one of its samples
    placements: list[Placement] = field(default_factory=list)


@dataclass
class ProblemPage:
    lines: list[ProblemLine]
    total: int
    page: int
    pages: int


@dataclass
class SampleView:
    generation: GenerationRow
    verdict: VerdictRow | None
    placements: list[Placement]

    def turns(self) -> list[tuple[str, str, str, int]]:
        """(label, text, finish reason, tokens) per turn; phase-1 turns named by their role."""
        g = self.generation
        labels = PHASE1_TURNS if g.phase == 1 and len(g.turns) == 3 else ()
        return [
            (
                labels[i] if labels else f"turn {i + 1}",
                text,
                g.finish_reasons[i] if i < len(g.finish_reasons) else "",
                g.tokens[i] if i < len(g.tokens) else 0,
            )
            for i, text in enumerate(g.turns)
        ]


@dataclass
class ProblemDetail:
    problem: Problem
    samples: list[SampleView]
    attempts: AttemptCount | None
    placements: list[Placement]  # the problem's shard rows, the oracle's reference included


def runs(session: Session) -> list[RunLine]:
    counts = dict(
        session.execute(select(Problem.run_id, func.count()).group_by(Problem.run_id)).all()
    )
    listed = session.scalars(select(Run).order_by(Run.created_at.desc())).all()
    return [
        RunLine(
            r.id,
            r.status,
            r.created_at,
            r.config.get("inference", {}).get("model", ""),
            counts.get(r.id, 0),
        )
        for r in listed
    ]


def _conditions(run_id: str, f: ProblemFilter, member: Membership) -> list[ColumnElement[bool]]:
    where = [Problem.run_id == run_id]
    if f.phase:
        where.append(Problem.phase == int(f.phase))
    if f.q:
        where.append(Problem.question.icontains(f.q, autoescape=True))
    sample: list[ColumnElement[bool]] = []
    if f.category:
        sample += [VerdictRow.phase == 1, VerdictRow.category == f.category]
    if f.verdict:
        sample.append(VerdictRow.accepted == (f.verdict == "accepted"))
    if f.rule:
        # The element as JSON writes it, quotes included: "length" does not match "not_length".
        text = cast(VerdictRow.failed_rules, Text)
        sample.append(text.contains(json.dumps(f.rule), autoescape=True))
    if sample:
        where.append(
            exists().where(
                VerdictRow.run_id == Problem.run_id,
                VerdictRow.problem_id == Problem.problem_id,
                *sample,
            )
        )
    if f.kept or f.stage:
        # An IN over the kept problems' ids: at most the run's problems, one bound value each.
        kept = Problem.problem_id.in_(member.problems(f.stage))
        where.append(~kept if f.kept == "no" else kept)
    return where


def problem_page(
    session: Session, run_id: str, f: ProblemFilter, member: Membership, size: int = PAGE_SIZE
) -> ProblemPage:
    where = _conditions(run_id, f, member)
    total = session.scalar(select(func.count()).select_from(Problem).where(*where)) or 0
    problems = session.execute(
        select(Problem.problem_id, Problem.phase, Problem.dataset, Problem.question)
        .where(*where)
        .order_by(Problem.id)
        .limit(size)
        .offset((f.page - 1) * size)
    ).all()
    lines = {
        p.problem_id: ProblemLine(
            p.problem_id,
            p.phase,
            p.dataset,
            shorten(p.question, 140, "…"),
            placements=_placed(member, p),
        )
        for p in problems
    }
    verdicts = session.execute(
        select(
            VerdictRow.problem_id,
            VerdictRow.phase,
            VerdictRow.category,
            VerdictRow.accepted,
            VerdictRow.failed_rules,
        ).where(VerdictRow.run_id == run_id, VerdictRow.problem_id.in_(lines))
    )
    for problem_id, phase, category, accepted, failed_rules in verdicts:
        line = lines[problem_id]
        line.samples += 1
        line.accepted += accepted
        line.rules.update(failed_rules)
        if phase == 1:
            line.category = category
    return ProblemPage(list(lines.values()), total, f.page, max(1, -(-total // size)))


def _placed(member: Membership, problem: Any) -> list[Placement]:
    return sorted(set(member.by_problem.get(problem.problem_id, [])), key=str)


def problem_detail(
    session: Session, run_id: str, problem_id: str, member: Membership
) -> ProblemDetail | None:
    problem = session.scalar(
        select(Problem).where(Problem.run_id == run_id, Problem.problem_id == problem_id)
    )
    if problem is None:
        return None
    mine = (GenerationRow.run_id == run_id, GenerationRow.problem_id == problem_id)
    generations = session.scalars(
        select(GenerationRow).where(*mine).order_by(GenerationRow.phase, GenerationRow.id)
    ).all()
    verdicts = {
        v.sample_id: v
        for v in session.scalars(
            select(VerdictRow).where(
                VerdictRow.run_id == run_id, VerdictRow.problem_id == problem_id
            )
        )
    }
    attempts = session.scalar(
        select(AttemptCount).where(
            AttemptCount.run_id == run_id, AttemptCount.problem_id == problem_id
        )
    )
    samples = [
        SampleView(g, verdicts.get(g.sample_id), member.by_sample.get(g.sample_id, []))
        for g in generations
    ]
    return ProblemDetail(problem, samples, attempts, _placed(member, problem))


def rule_names(session: Session, run_id: str) -> list[str]:
    """The rules the verifier counted for this run: the rows of the report's "Rule filters"."""
    return [row[0] for row in rule_rejections(session, run_id).rows]
