"""Phase 2's rounds: difficulty-aware rejection sampling, with the database as the state.

When the run's M1 checkpoint appears, each phase-2 problem gets an ``attempt_counts`` row and the
job of round 0. The round in that row is the round published; its verdicts arrive as one message
per job. Attempts and corrects are counted from the ``verdicts`` table (unique per sample), so a
redelivered message counts nothing twice. No correct sample after a round: the next round of the
schedule; a correct one: solved; none after the last round: exhausted.
"""

from __future__ import annotations

from prometheus_client import Histogram
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.core.db import AttemptCount, CheckpointRow, Problem, VerdictRow, insert_ignore
from shared.core.messages import CheckpointReady, ProblemJob, VerifiedSamples
from shared.core.runs import pending_jobs, round_job

ATTEMPTS = Histogram(
    "dualphase_attempts_per_problem",
    "Phase-2 attempts spent on a problem when it was solved or exhausted.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


def next_round(schedule: list[int], round_: int, corrects: int) -> int | None:
    """The round a problem gets after ``round_``, or None when it is solved or exhausted."""
    return None if corrects > 0 or round_ + 1 >= len(schedule) else round_ + 1


def finish_round(session: Session, msg: VerifiedSamples, schedule: list[int]) -> ProblemJob | None:
    """Count a round's verdicts; the problem's next round's job, or None when the problem is now
    final (solved or exhausted) or the message repeats a round already finished."""
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
        return None  # a redelivery of a round already finished
    count.attempts, count.corrects = _attempts(session, msg.run_id, msg.problem_id)
    following = next_round(schedule, count.round, count.corrects)
    if following is not None:
        count.round = following  # recorded before the job is published
        return round_job(session, count, schedule)
    count.state = "solved" if count.corrects else "exhausted"
    ATTEMPTS.observe(count.attempts)
    session.flush()
    return None


def _attempts(session: Session, run_id: str, problem_id: str) -> tuple[int, int]:
    """(attempts, corrects) from the verdicts: a correct sample is an accepted one."""
    attempts, corrects = session.execute(
        select(func.count(), func.count().filter(VerdictRow.accepted)).where(
            VerdictRow.run_id == run_id, VerdictRow.problem_id == problem_id, VerdictRow.phase == 2
        )
    ).one()
    return attempts, corrects


def start_phase2(session: Session, msg: CheckpointReady, schedule: list[int]) -> list[ProblemJob]:
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
    return pending_jobs(session, msg.run_id, schedule)
