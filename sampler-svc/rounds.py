"""Phase 2's rounds: difficulty-aware rejection sampling, with the database as the state.

When the run's M1 checkpoint appears, each phase-2 problem gets an ``attempt_counts`` row and the
job of round 0. The round in that row is the round published; its verdicts arrive as one message
per job. Attempts and corrects are counted from the ``verdicts`` table (unique per sample), so a
redelivered message counts nothing twice. No correct sample after a round: the next round of the
schedule; a correct one: solved; none after the last round: exhausted.
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import Histogram
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.core.db import (
    AttemptCount,
    CheckpointRow,
    GenerationRow,
    Problem,
    Run,
    VerdictRow,
    insert_ignore,
)
from shared.core.messages import (
    CheckpointReady,
    Message,
    ProblemJob,
    RejectionSampled,
    VerifiedSamples,
)
from shared.core.runs import phase2_job
from shared.core.settings import Settings

ATTEMPTS = Histogram(
    "dualphase_attempts_per_problem",
    "Phase-2 attempts spent on a problem when it was solved or exhausted.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


def next_round(schedule: list[int], round_: int, corrects: int) -> int | None:
    """The round a problem gets after ``round_``, or None when it is solved or exhausted."""
    return None if corrects > 0 or round_ + 1 >= len(schedule) else round_ + 1


def finish_round(session: Session, msg: VerifiedSamples, settings: Settings) -> list[Message]:
    count = session.scalars(
        select(AttemptCount)
        .where(AttemptCount.run_id == msg.run_id, AttemptCount.problem_id == msg.problem_id)
        .with_for_update()
    ).one_or_none()
    if count is None:
        raise ValueError(
            f"run {msg.run_id} problem {msg.problem_id}: phase-2 verdicts (job {msg.job_id}) "
            "but no attempt_counts row; phase 2 starts with the M1 checkpoint"
        )
    if count.state != "pending" or msg.round != count.round:
        return []  # a redelivery of a round already finished
    count.attempts, count.corrects = _attempts(session, msg.run_id, msg.problem_id)
    following = next_round(settings.sampler.schedule, count.round, count.corrects)
    if following is not None:
        count.round = following  # recorded before the job is published
        return [sample_job(session, count, settings)]
    count.state = "solved" if count.corrects else "exhausted"
    ATTEMPTS.observe(count.attempts)
    kept = kept_solutions(session, msg.run_id, msg.problem_id, settings.sampler.keep_k)
    done = RejectionSampled(
        run_id=msg.run_id,
        problem_id=msg.problem_id,
        state=count.state,  # type: ignore[arg-type]
        attempts=count.attempts,
        corrects=count.corrects,
        kept_sample_ids=[g.sample_id for g in kept],
    )
    session.flush()
    return [done]


def _attempts(session: Session, run_id: str, problem_id: str) -> tuple[int, int]:
    """(attempts, corrects) from the verdicts: a correct sample is an accepted one."""
    attempts, corrects = session.execute(
        select(func.count(), func.count().filter(VerdictRow.accepted)).where(
            VerdictRow.run_id == run_id, VerdictRow.problem_id == problem_id, VerdictRow.phase == 2
        )
    ).one()
    return attempts, corrects


def normalise(text: str) -> str:
    """Dedup key of a solution: case and whitespace do not make a new solution."""
    return " ".join(text.lower().split())


def kept_solutions(session: Session, run_id: str, problem_id: str, k: int) -> list[GenerationRow]:
    """Up to k accepted phase-2 solutions with distinct normalised text, in sample order."""
    accepted = session.scalars(
        select(VerdictRow.sample_id)
        .where(
            VerdictRow.run_id == run_id,
            VerdictRow.problem_id == problem_id,
            VerdictRow.phase == 2,
            VerdictRow.accepted,
        )
        .order_by(VerdictRow.round, VerdictRow.sample_id)
    ).all()
    gens = generations(session, run_id, accepted)
    kept: dict[str, GenerationRow] = {}
    for sample_id in accepted:
        kept.setdefault(normalise(gens[sample_id].turns[-1]), gens[sample_id])
    return list(kept.values())[:k]


def generations(
    session: Session, run_id: str, sample_ids: Collection[str]
) -> dict[str, GenerationRow]:
    rows = session.scalars(
        select(GenerationRow).where(
            GenerationRow.run_id == run_id, GenerationRow.sample_id.in_(list(sample_ids))
        )
    ).all()
    found = {g.sample_id: g for g in rows}
    if missing := [s for s in sample_ids if s not in found]:
        raise LookupError(f"run {run_id}: verdicts without generation rows: {missing[:5]}")
    return found


def start_phase2(session: Session, msg: CheckpointReady, settings: Settings) -> list[Message]:
    """M1 is ready: start phase 2 (round 0 for every phase-2 problem of the run)."""
    insert_ignore(
        session,
        CheckpointRow,
        [
            dict(
                id=msg.checkpoint_id,
                run_id=msg.run_id,
                stage=msg.stage,
                path=msg.path,
                parent_id=msg.parent_checkpoint_id,
                shard_id=msg.shard_id,
                training_config={},
            )
        ],
    )
    problems = session.scalars(
        select(Problem.problem_id).where(Problem.run_id == msg.run_id, Problem.phase == 2)
    ).all()
    insert_ignore(
        session,
        AttemptCount,
        [
            dict(run_id=msg.run_id, problem_id=p, round=0, attempts=0, corrects=0, state="pending")
            for p in problems
        ],
    )
    return pending_jobs(session, msg.run_id, settings)


def sampling_checkpoint(session: Session, run_id: str) -> CheckpointRow | None:
    return session.scalars(
        select(CheckpointRow)
        .where(
            CheckpointRow.run_id == run_id,
            CheckpointRow.stage == "M1",
            CheckpointRow.status == "ready",
        )
        .order_by(CheckpointRow.created_at)
    ).first()


def sample_job(session: Session, count: AttemptCount, settings: Settings) -> ProblemJob:
    """The job of a problem's current round. Every problem of a round shares the seed, so the
    generator batches them; rounds never share seeds (round r starts past all earlier samples)."""
    problem = session.scalars(
        select(Problem).where(
            Problem.run_id == count.run_id, Problem.problem_id == count.problem_id
        )
    ).one()
    run = session.get(Run, count.run_id)
    checkpoint = sampling_checkpoint(session, count.run_id)
    assert run is not None and checkpoint is not None  # attempt_counts rows come from both
    return phase2_job(run.id, problem, count.round, checkpoint.path, settings, run.seed)


def pending_jobs(session: Session, run_id: str, settings: Settings) -> list[Message]:
    """The current round's job of every pending problem (a re-publish is harmless: job ids)."""
    counts = session.scalars(
        select(AttemptCount)
        .where(AttemptCount.run_id == run_id, AttemptCount.state == "pending")
        .order_by(AttemptCount.problem_id)
    ).all()
    return [sample_job(session, c, settings) for c in counts]
