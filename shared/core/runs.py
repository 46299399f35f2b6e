"""Runs: submit one (problems into the database, phase-1 jobs onto the bus), and reconcile it.

The database is the record of what a run should contain. The reconciler compares it with what
was produced and re-publishes the work that was published but never finished (a broker that lost
it, a crash between a write and a publish), so nothing is lost; the consumers' idempotent writes
make a second copy harmless.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.core.bus import Publisher
from shared.core.db import (
    AttemptCount,
    CheckpointRow,
    EvalResult,
    GenerationRow,
    Problem,
    Run,
    VerdictRow,
    insert_ignore,
)
from shared.core.messages import (
    BASE_CHECKPOINT_ID,
    CHECKPOINTS,
    DIALOGUES,
    PROBLEMS,
    CheckpointReady,
    Dialogue,
    Generation,
    ProblemJob,
    SamplingParams,
)
from shared.core.settings import Settings


@dataclass(frozen=True)
class ProblemSpec:
    """A problem to put into a run."""

    id: str
    question: str
    gold: str
    dataset: str = ""
    source: str = ""
    solution: str = ""  # a reference solution, for the oracle arm


def phase1_job(run_id: str, problem: Problem, settings: Settings, seed: int) -> ProblemJob:
    gen = settings.generator
    return ProblemJob(
        run_id=run_id,
        kind="dialogue",
        problem_id=problem.problem_id,
        job_id=f"{run_id}:{problem.problem_id}:p1",
        phase=1,
        question=problem.question,
        gold=problem.gold,
        dataset=problem.dataset,
        model=gen.teacher_model,
        params=SamplingParams(
            n=1,
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_new_tokens=gen.max_new_tokens,
            seed=seed,
        ),
    )


def phase2_job(
    run_id: str, problem: Problem, round_: int, model: str, settings: Settings, seed: int
) -> ProblemJob:
    """The sampling job of ``problem``'s round ``round_`` with ``model`` (the M1 checkpoint).
    Every problem of a round shares the seed, so the generator batches them; rounds never share
    seeds (round r starts past all earlier rounds' samples)."""
    schedule, gen = settings.sampler.schedule, settings.generator
    return ProblemJob(
        run_id=run_id,
        kind="sample",
        problem_id=problem.problem_id,
        job_id=f"{run_id}:{problem.problem_id}:r{round_}",
        phase=2,
        question=problem.question,
        gold=problem.gold,
        dataset=problem.dataset,
        round=round_,
        model=model,
        params=SamplingParams(
            n=schedule[round_],
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_new_tokens=gen.max_new_tokens,
            seed=seed + sum(schedule[:round_]),
            stop_after_answer=gen.stop_after_answer,
        ),
    )


def submit_run(
    settings: Settings,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    phase1: list[ProblemSpec],
    phase2: list[ProblemSpec],
    seed: int = 0,
    run_id: str = "",
) -> str:
    """Record the run and its problems, then publish the phase-1 dialogue jobs and the base
    model (M0) for evaluation."""
    run_id = run_id or f"run-{uuid.uuid4().hex[:8]}"
    rows = [
        dict(
            run_id=run_id,
            problem_id=p.id,
            phase=phase,
            question=p.question,
            gold=p.gold,
            dataset=p.dataset,
            source=p.source,
            solution=p.solution,
        )
        for phase, specs in ((1, phase1), (2, phase2))
        for p in specs
    ]
    with sessions.begin() as session:
        session.add(Run(id=run_id, config=settings.model_dump(mode="json"), seed=seed))
        session.flush()
        insert_ignore(session, Problem, rows)
    republish_unfinished(settings, sessions, publisher, run_id)
    # M0 depends on nothing: evaluated now, it shares the machine with phase 1's few dialogues
    # rather than with phase 2's sampling. Should this message be lost, M1's names M0 again.
    base = CheckpointReady(
        run_id=run_id, checkpoint_id=BASE_CHECKPOINT_ID, stage="M0", path=settings.inference.model
    )
    publisher.publish(CHECKPOINTS, base)
    return run_id


def republish_unfinished(
    settings: Settings, sessions: sessionmaker[Session], publisher: Publisher, run_id: str
) -> dict[str, int]:
    """Phase 1: publish the job of every problem without a generation, and the dialogue of every
    generation without a verdict. Returns how many of each were published."""
    jobs, dialogues = unfinished_phase1(settings, sessions, run_id)
    for job in jobs:
        publisher.publish(PROBLEMS, job)
    for dialogue in dialogues:
        publisher.publish(DIALOGUES, dialogue)
    return {"jobs": len(jobs), "dialogues": len(dialogues)}


def unfinished_phase1(
    settings: Settings, sessions: sessionmaker[Session], run_id: str
) -> tuple[list[ProblemJob], list[Dialogue]]:
    """Phase 1: the jobs of problems without a generation, the dialogues without a verdict."""
    with sessions() as session:
        run = session.get(Run, run_id)
        problems = session.scalars(
            select(Problem).where(Problem.run_id == run_id, Problem.phase == 1)
        ).all()
        generated = set(
            session.scalars(
                select(GenerationRow.problem_id).where(
                    GenerationRow.run_id == run_id, GenerationRow.phase == 1
                )
            )
        )
        verdicts = set(
            session.scalars(
                select(VerdictRow.problem_id).where(
                    VerdictRow.run_id == run_id, VerdictRow.phase == 1
                )
            )
        )
    jobs = [phase1_job(run_id, p, settings, run.seed) for p in problems]
    missing = [job for job in jobs if job.problem_id not in generated]
    unverified = [job for job in jobs if job.problem_id in generated - verdicts]
    return missing, list(stored_dialogues(sessions, unverified).values())


def cancel_run(sessions: sessionmaker[Session], run_id: str) -> str:
    """Mark a run cancelled (a complete run stays complete). Returns its status; KeyError if
    there is no such run."""
    with sessions.begin() as session:
        run = session.get(Run, run_id, with_for_update=True)
        if run is None:
            raise KeyError(run_id)
        if run.status != "complete":
            run.status, run.updated_at = "cancelled", datetime.now(UTC)
        return run.status


def cancelled_runs(sessions: sessionmaker[Session], run_ids: Collection[str]) -> set[str]:
    """Which of these runs are cancelled (their work is skipped)."""
    with sessions() as session:
        return set(
            session.scalars(
                select(Run.id).where(Run.id.in_(set(run_ids)), Run.status == "cancelled")
            )
        )


def stored_dialogues(
    sessions: sessionmaker[Session], jobs: list[ProblemJob]
) -> dict[str, Dialogue]:
    """Dialogues of the jobs whose generations are already in the database, by job id."""
    by_id = {job.job_id: job for job in jobs}
    with sessions() as session:
        rows = session.scalars(
            select(GenerationRow)
            .where(GenerationRow.job_id.in_(by_id))
            .order_by(GenerationRow.job_id, GenerationRow.id)
        ).all()
    grouped: dict[str, list[GenerationRow]] = defaultdict(list)
    for row in rows:
        if row.run_id == by_id[row.job_id].run_id:
            grouped[row.job_id].append(row)
    return {job_id: _dialogue(by_id[job_id], rs) for job_id, rs in grouped.items()}


def _dialogue(job: ProblemJob, rows: list[GenerationRow]) -> Dialogue:
    first = rows[0]
    return Dialogue(
        run_id=job.run_id,
        problem_id=job.problem_id,
        job_id=job.job_id,
        phase=job.phase,
        round=job.round,
        gold=job.gold,
        dataset=job.dataset,
        model=first.model,
        prompt_version=first.prompt_version,
        params=job.params,
        samples=[
            Generation(
                sample_id=r.sample_id,
                turns=r.turns,
                tokens=r.tokens,
                finish_reasons=r.finish_reasons,
                seed=r.seed,
            )
            for r in rows
        ],
    )


def run_progress(sessions: sessionmaker[Session], run_id: str) -> dict[str, tuple[int, int]]:
    """(done, total) per stage of a run, read from the database. The stages are the run's own:
    its config snapshot says whether it has one phase or two, and an oracle arm or not."""
    with sessions() as s:
        sampler = s.get_one(Run, run_id).config.get("sampler", {})
        phases, oracle = sampler.get("phases", 2), sampler.get("oracle", False)

        def count(stmt: Select) -> int:
            return s.scalar(select(func.count()).select_from(stmt.subquery())) or 0

        problems = {
            phase: count(select(Problem.id).where(Problem.run_id == run_id, Problem.phase == phase))
            for phase in (1, 2)
        }
        generated = count(
            select(GenerationRow.problem_id)
            .distinct()
            .where(GenerationRow.run_id == run_id, GenerationRow.phase == 1)
        )
        verified = count(
            select(VerdictRow.problem_id)
            .distinct()
            .where(VerdictRow.run_id == run_id, VerdictRow.phase == 1)
        )
        final = count(
            select(AttemptCount.id).where(
                AttemptCount.run_id == run_id, AttemptCount.state.in_(["solved", "exhausted"])
            )
        )
        ckpts = {
            stage: count(
                select(CheckpointRow.id).where(
                    CheckpointRow.run_id == run_id,
                    CheckpointRow.stage == stage,
                    CheckpointRow.status == "ready",
                )
            )
            for stage in ("M1", "M2", "oracle")
        }
        evaluated = count(
            select(EvalResult.checkpoint_id).distinct().where(EvalResult.run_id == run_id)
        )
    stages = {
        "phase 1: dialogues generated": (generated, problems[1]),
        "phase 1: dialogues verified": (verified, problems[1]),
        "M1 trained": (ckpts["M1"], 1),
        "phase 2: problems solved or exhausted": (final, problems[2]),
        "M2 trained": (ckpts["M2"], 1),
        "models evaluated (M0, M1, M2)": (evaluated, 3),
    }
    if phases == 1:  # the one-phase ablation ends with M1
        del stages["phase 2: problems solved or exhausted"], stages["M2 trained"]
        stages["models evaluated (M0, M1, M2)"] = (evaluated, 2)
    if oracle:  # one more model to train and to evaluate
        done, total = stages.pop("models evaluated (M0, M1, M2)")
        stages["oracle arm trained"] = (ckpts["oracle"], 1)
        stages["models evaluated (M0, M1, M2, oracle)"] = (done, total + 1)
    return stages


def is_complete(progress: dict[str, tuple[int, int]]) -> bool:
    """Every stage done: the reconciler marks the run complete, the progress bars stop."""
    return all(done >= total for done, total in progress.values())
