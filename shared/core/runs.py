"""Runs: submit one (problems into the database, phase-1 jobs onto the bus), build its jobs, and
read its state back: what it still owes, its progress, whether it is complete.

The database is the record of what a run should contain. The control plane (``control_svc``)
compares it with what was produced and re-publishes the work that was published but never
finished, with the functions here; the consumers' idempotent writes make a second copy harmless.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
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
    BASELINE_PREFIX,
    CHECKPOINTS,
    PROBLEMS,
    CheckpointReady,
    Dialogue,
    Generation,
    ProblemJob,
    SamplingParams,
    Verdict,
    VerifiedSamples,
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


def job_id(run_id: str, problem_id: str, phase: int, round_: int = 0) -> str:
    """The idempotency key of a problem's job: its phase-1 dialogue, or its phase-2 round."""
    return f"{run_id}:{problem_id}:" + ("p1" if phase == 1 else f"r{round_}")


def problem_job(
    run_id: str,
    run_seed: int,
    problem: Problem,
    schedule: Sequence[int] = (),
    round_: int = 0,
    model: str = "",
) -> ProblemJob:
    """The one job builder. Phase 1: one dialogue, seeded with the run seed, with the configured
    model. Phase 2: ``schedule[round_]`` samples with ``model`` (the run's M1). Every problem of a
    round shares the seed, so the generator batches them; rounds never share seeds (round r
    starts past all earlier rounds' samples)."""
    phase2 = problem.phase == 2
    return ProblemJob(
        run_id=run_id,
        kind="sample" if phase2 else "dialogue",
        problem_id=problem.problem_id,
        job_id=job_id(run_id, problem.problem_id, problem.phase, round_),
        phase=problem.phase,
        question=problem.question,
        gold=problem.gold,
        dataset=problem.dataset,
        round=round_,
        model=model,
        n=schedule[round_] if phase2 else 1,
        seed=run_seed + (sum(schedule[:round_]) if phase2 else 0),
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
    jobs, _ = unfinished_phase1(sessions, run_id)
    for job in jobs:
        publisher.publish(PROBLEMS, job)
    # M0 depends on nothing: evaluated now, it shares the machine with phase 1's few dialogues
    # rather than with phase 2's sampling. Should this message be lost, M1's names M0 again.
    base = CheckpointReady(
        run_id=run_id, checkpoint_id=BASE_CHECKPOINT_ID, stage="M0", path=settings.inference.model
    )
    publisher.publish(CHECKPOINTS, base)
    return run_id


def unfinished_phase1(
    sessions: sessionmaker[Session], run_id: str
) -> tuple[list[ProblemJob], list[Dialogue]]:
    """Phase 1: the jobs of problems without a generation, the dialogues without a verdict."""
    with sessions() as session:
        run = session.get_one(Run, run_id)
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
    jobs = [problem_job(run_id, run.seed, p) for p in problems]
    missing = [job for job in jobs if job.problem_id not in generated]
    unverified = [job for job in jobs if job.problem_id in generated - verdicts]
    return missing, list(stored_dialogues(sessions, unverified).values())


def sampling_checkpoint(session: Session, run_id: str) -> CheckpointRow | None:
    """The run's M1: the model phase 2 samples with (None until it is ready)."""
    return session.scalars(
        select(CheckpointRow)
        .where(
            CheckpointRow.run_id == run_id,
            CheckpointRow.stage == "M1",
            CheckpointRow.status == "ready",
        )
        .order_by(CheckpointRow.created_at)
    ).first()


def round_job(session: Session, count: AttemptCount, schedule: list[int]) -> ProblemJob:
    """The job of a phase-2 problem's current round, with the run's M1."""
    problem = session.scalars(
        select(Problem).where(
            Problem.run_id == count.run_id, Problem.problem_id == count.problem_id
        )
    ).one()
    run = session.get_one(Run, count.run_id)
    checkpoint = sampling_checkpoint(session, count.run_id)
    assert checkpoint is not None  # attempt_counts rows are made when M1 is ready
    return problem_job(run.id, run.seed, problem, schedule, count.round, checkpoint.path)


def pending_jobs(session: Session, run_id: str, schedule: list[int]) -> list[ProblemJob]:
    """The current round's job of every pending phase-2 problem (a re-publish is harmless: job
    ids)."""
    counts = session.scalars(
        select(AttemptCount)
        .where(AttemptCount.run_id == run_id, AttemptCount.state == "pending")
        .order_by(AttemptCount.problem_id)
    ).all()
    return [round_job(session, c, schedule) for c in counts]


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


def stored_verdicts(session: Session, run_id: str, problem_id: str) -> VerifiedSamples:
    """The verifier's phase-1 message of a problem, rebuilt from its verdict rows."""
    rows = session.scalars(
        select(VerdictRow)
        .where(
            VerdictRow.run_id == run_id, VerdictRow.problem_id == problem_id, VerdictRow.phase == 1
        )
        .order_by(VerdictRow.sample_id)
    ).all()
    return VerifiedSamples(
        run_id=run_id,
        problem_id=problem_id,
        job_id=job_id(run_id, problem_id, 1),
        phase=1,
        verdicts=[
            Verdict(
                sample_id=r.sample_id,
                initial_correct=r.initial_correct,
                final_correct=r.final_correct,
                category=r.category,  # type: ignore[arg-type]
                accepted=r.accepted,
                failed_rules=r.failed_rules,
                extracted=r.extracted,
            )
            for r in rows
        ],
    )


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
        params=SamplingParams.model_validate(first.params),
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
        config = s.get_one(Run, run_id).config
        sampler = config.get("sampler", {})
        phases, oracle = sampler.get("phases", 2), sampler.get("oracle", False)
        baselines = len(config.get("eval", {}).get("baseline_models", []))

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
        evaluated_ids = set(
            s.scalars(
                select(EvalResult.checkpoint_id).distinct().where(EvalResult.run_id == run_id)
            )
        )
    baselines_done = sum(c.startswith(BASELINE_PREFIX) for c in evaluated_ids)
    evaluated = len(evaluated_ids) - baselines_done
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
    if oracle:  # one more model to train and to evaluate, named by its source
        arm = (
            "distilled arm" if sampler.get("arm_solutions") else "oracle arm (reference solutions)"
        )
        done, total = stages.pop("models evaluated (M0, M1, M2)")
        stages[f"{arm} trained"] = (ckpts["oracle"], 1)
        stages[f"models evaluated (M0, M1, M2, {arm.split(' (')[0]})"] = (done, total + 1)
    if baselines:  # eval.baseline_models, each evaluated once
        stages["baseline models evaluated"] = (baselines_done, baselines)
    return stages


def is_complete(progress: dict[str, tuple[int, int]]) -> bool:
    """Every stage done: the reconciler marks the run complete, the progress bars stop."""
    return all(done >= total for done, total in progress.values())
