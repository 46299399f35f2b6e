"""sampler-svc logic: the phase-1 set, the phase-2 rounds, the training shards.

Every function takes a SQLAlchemy session inside the caller's transaction and returns the
messages to publish after the commit; the database is the whole state, so a restarted sampler
goes on from it (``reconcile``).

Phase 1: when every phase-1 problem of a run has a verdict, the accepted samples are balanced
initial-right : initial-wrong = 1:1 (seeded by the run), written as the ``phase1`` shard, and its
manifest goes to the trainer (M0 -> M1).

Phase 2: when the run's M1 checkpoint appears, each phase-2 problem gets an ``attempt_counts`` row
and the job of round 0. The round in that row is the round published; its verdicts arrive as one
message per job. Attempts and corrects are counted from the ``verdicts`` table (unique per sample),
so a redelivered message counts nothing twice. No correct sample after a round: the next round of
the schedule; a correct one: solved; none after the last round: exhausted. When no problem is
pending, the ``phase2`` shard (sequential mode) or the ``joint`` shard (phase 1 + phase 2) is
written and announced.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from prometheus_client import Histogram
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import shards
from shared.bus import Publisher
from shared.db import (
    AttemptCount,
    CheckpointRow,
    GenerationRow,
    Problem,
    RuleCount,
    Run,
    VerdictRow,
    insert_ignore,
)
from shared.decontam import Decontaminator
from shared.markers import Source, render
from shared.messages import (
    PROBLEMS,
    REJECTION_SAMPLED,
    TRAINING_SHARDS,
    CheckpointReady,
    Message,
    ProblemJob,
    RejectionSampled,
    SamplingParams,
    ShardManifest,
    VerifiedSamples,
)
from shared.prompts import load_prompts
from shared.settings import Settings

ATTEMPTS = Histogram(
    "dualphase_attempts_per_problem",
    "Phase-2 attempts spent on a problem when it was solved or exhausted.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
TOPICS = {ProblemJob: PROBLEMS, RejectionSampled: REJECTION_SAMPLED, ShardManifest: TRAINING_SHARDS}


def publish_all(publisher: Publisher, messages: list[Message]) -> None:
    """Publish each message on its topic (one wait for the acks per topic)."""
    by_topic: dict[str, list[Message]] = defaultdict(list)
    for message in messages:
        by_topic[TOPICS[type(message)]].append(message)
    for topic, batch in by_topic.items():
        publisher.publish_many(topic, batch)


def make_handlers(
    settings: Settings, sessions: sessionmaker[Session], publisher: Publisher
) -> tuple[Callable[[Message], None], Callable[[Message], None]]:
    """Consumer handlers for ``verified-samples`` and ``checkpoints``: write, commit, publish.

    Publishing after the commit means a crash in between loses messages, never state; the
    ``reconcile`` at start-up publishes them again.
    """

    def verdicts(message: Message) -> None:
        assert isinstance(message, VerifiedSamples)
        with sessions.begin() as session:
            out = on_verdicts(session, message, settings)
        publish_all(publisher, out)

    def checkpoint(message: Message) -> None:
        assert isinstance(message, CheckpointReady)
        with sessions.begin() as session:
            out = on_checkpoint(session, message, settings)
        publish_all(publisher, out)

    return verdicts, checkpoint


# --- verdicts -------------------------------------------------------------------------------


def on_verdicts(session: Session, msg: VerifiedSamples, settings: Settings) -> list[Message]:
    """Record the verdicts of one job; return what to publish next."""
    record_verdicts(session, msg)
    if msg.phase == 1:
        return seal_phase1(session, msg.run_id, settings)
    return _finish_round(session, msg, settings)


def record_verdicts(session: Session, msg: VerifiedSamples) -> int:
    """Insert the verdicts unless present (the verifier may have written them). Returns new rows."""
    rows = [
        dict(
            run_id=msg.run_id,
            problem_id=msg.problem_id,
            sample_id=v.sample_id,
            phase=msg.phase,
            round=msg.round,
            category=v.category,
            initial_correct=v.initial_correct,
            final_correct=v.final_correct,
            accepted=v.accepted,
            failed_rules=v.failed_rules,
            extracted=v.extracted,
        )
        for v in msg.verdicts
    ]
    return insert_ignore(session, VerdictRow, rows)


def next_round(schedule: list[int], round_: int, corrects: int) -> int | None:
    """The round a problem gets after ``round_``, or None when it is solved or exhausted."""
    return None if corrects > 0 or round_ + 1 >= len(schedule) else round_ + 1


def _finish_round(session: Session, msg: VerifiedSamples, settings: Settings) -> list[Message]:
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
    return [done, *seal_phase2(session, msg.run_id, settings)]


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
    gens = _generations(session, run_id, accepted)
    kept: dict[str, GenerationRow] = {}
    for sample_id in accepted:
        kept.setdefault(normalise(gens[sample_id].turns[-1]), gens[sample_id])
    return list(kept.values())[:k]


# --- checkpoints and phase-2 jobs -----------------------------------------------------------


def on_checkpoint(session: Session, msg: CheckpointReady, settings: Settings) -> list[Message]:
    """M1 is ready: start phase 2 (round 0 for every phase-2 problem of the run)."""
    if msg.stage != "M1" or settings.sampler.phases == 1:
        return []
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
    return pending_jobs(session, msg.run_id, settings) + seal_phase2(session, msg.run_id, settings)


def _sampling_checkpoint(session: Session, run_id: str) -> CheckpointRow | None:
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
    checkpoint = _sampling_checkpoint(session, count.run_id)
    assert run is not None and checkpoint is not None  # attempt_counts rows come from both
    schedule, gen = settings.sampler.schedule, settings.generator
    return ProblemJob(
        run_id=count.run_id,
        kind="sample",
        problem_id=count.problem_id,
        job_id=f"{count.run_id}:{count.problem_id}:r{count.round}",
        phase=2,
        question=problem.question,
        gold=problem.gold,
        dataset=problem.dataset,
        round=count.round,
        model=checkpoint.path,
        params=SamplingParams(
            n=schedule[count.round],
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_new_tokens=gen.max_new_tokens,
            seed=run.seed + sum(schedule[: count.round]),
        ),
    )


def pending_jobs(session: Session, run_id: str, settings: Settings) -> list[Message]:
    """The current round's job of every pending problem (a re-publish is harmless: job ids)."""
    counts = session.scalars(
        select(AttemptCount)
        .where(AttemptCount.run_id == run_id, AttemptCount.state == "pending")
        .order_by(AttemptCount.problem_id)
    ).all()
    return [sample_job(session, c, settings) for c in counts]


def reconcile(session: Session, settings: Settings) -> list[Message]:
    """At start-up: everything that should have been published and may have been lost."""
    out: list[Message] = []
    for run_id in session.scalars(select(Run.id).order_by(Run.id)).all():
        out += seal_phase1(session, run_id, settings, again=True)
        out += pending_jobs(session, run_id, settings)
        out += seal_phase2(session, run_id, settings, again=True)
    return out


# --- phase-1 set ----------------------------------------------------------------------------


@dataclass
class Phase1Set:
    """The balanced phase-1 set and how it was made.

    counts: name -> (failed, passed), stored in ``rule_counts`` as ``phase1:<name>``:
    ``category:RR`` etc. (left out, kept), ``rule:<rule>`` (failed, passed), ``decontam``
    (dropped, not dropped), ``balance`` (accepted but left out to balance, kept).
    """

    kept: list[VerdictRow]
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)


def build_phase1_set(
    session: Session, run_id: str, seed: int, exclude: Collection[str] = ()
) -> Phase1Set:
    """Accepted phase-1 samples, initial-right : initial-wrong = 1:1, drawn with ``seed``.

    Problems in ``exclude`` (decontamination) are dropped before balancing, so 1:1 holds.
    """
    verdicts = session.scalars(
        select(VerdictRow)
        .where(VerdictRow.run_id == run_id, VerdictRow.phase == 1)
        .order_by(VerdictRow.problem_id, VerdictRow.sample_id)
    ).all()
    clean = [v for v in verdicts if v.problem_id not in exclude]
    accepted = [v for v in clean if v.accepted and v.final_correct]
    right = [v for v in accepted if v.initial_correct]
    wrong = [v for v in accepted if not v.initial_correct]
    n = min(len(right), len(wrong))
    rng = random.Random(seed)
    kept = rng.sample(right, n) + rng.sample(wrong, n)
    kept.sort(key=lambda v: (v.problem_id, v.sample_id))

    kept_ids = {v.sample_id for v in kept}
    counts: dict[str, tuple[int, int]] = {
        "decontam": (len(verdicts) - len(clean), len(clean)),
        "balance": (len(accepted) - len(kept), len(kept)),
    }
    for category in ("RR", "RW", "WR", "WW"):
        of_category = [v for v in verdicts if v.category == category]
        in_set = sum(v.sample_id in kept_ids for v in of_category)
        counts[f"category:{category}"] = (len(of_category) - in_set, in_set)
    for rule in sorted({r for v in verdicts for r in v.failed_rules}):
        failed = sum(rule in v.failed_rules for v in verdicts)
        counts[f"rule:{rule}"] = (failed, len(verdicts) - failed)
    return Phase1Set(kept, counts)


def store_counts(
    session: Session, run_id: str, prefix: str, counts: dict[str, tuple[int, int]]
) -> None:
    """Write counts as absolute values (a rebuild overwrites, never adds)."""
    rows = [dict(run_id=run_id, rule=f"{prefix}{name}", failed=0, passed=0) for name in counts]
    insert_ignore(session, RuleCount, rows)
    stored = session.scalars(
        select(RuleCount).where(RuleCount.run_id == run_id, RuleCount.rule.startswith(prefix))
    ).all()
    for row in stored:
        if (name := row.rule.removeprefix(prefix)) in counts:
            row.failed, row.passed = counts[name]


# --- shards ---------------------------------------------------------------------------------


def contaminated(session: Session, run_id: str, settings: Settings) -> set[str]:
    """Problem ids of the run sharing a long n-gram with a benchmark problem."""
    check = Decontaminator.from_folder(settings.eval.datasets_dir, settings.sampler.decontam_ngram)
    problems = session.scalars(select(Problem).where(Problem.run_id == run_id)).all()
    return {p.problem_id for p in problems if check.match(p.question)}


def seal_phase1(
    session: Session, run_id: str, settings: Settings, again: bool = False
) -> list[Message]:
    """Write the phase-1 shard once every phase-1 problem has a verdict; its manifest.

    The verifier writes verdict rows before the sampler reads its messages, so every message of
    the sampler's backlog can find all verdicts present: only the call that writes the shard
    announces it, unless ``again`` (the reconciler re-announces a shard whose publish was lost).
    """
    run = session.get(Run, run_id, with_for_update=True)  # one replica seals, the others wait
    if run is None:
        raise ValueError(f"run {run_id!r} is not in the runs table")
    problems, judged = session.execute(
        select(
            select(func.count())
            .where(Problem.run_id == run_id, Problem.phase == 1)
            .scalar_subquery(),
            select(func.count(func.distinct(VerdictRow.problem_id)))
            .where(VerdictRow.run_id == run_id, VerdictRow.phase == 1)
            .scalar_subquery(),
        )
    ).one()
    if problems == 0 or judged < problems:
        return []
    files = shards.registered(session, run_id, "phase1")
    if not files:
        phase1 = build_phase1_set(
            session, run_id, run.seed, contaminated(session, run_id, settings)
        )
        store_counts(session, run_id, "phase1:", phase1.counts)
        rows = _rows(session, run_id, phase1.kept, "multi-turn", settings)
        files = [
            shards.write_jsonl(rows, shards.shard_path(settings.common.data_dir, run_id, "phase1"))
        ]
        shards.register(session, run_id, "phase1", files)
    elif not again:
        return []
    return _unless_trained(
        session, shards.manifest(run_id, "phase1", files, settings.inference.model)
    )


def seal_phase2(
    session: Session, run_id: str, settings: Settings, again: bool = False
) -> list[Message]:
    """Write the phase-2 (sequential) or joint shard once no phase-2 problem is pending; its
    manifest, announced by the call that writes the shard or ``again`` (as ``seal_phase1``)."""
    checkpoint = _sampling_checkpoint(session, run_id)
    if checkpoint is None:
        return []
    run = session.get(Run, run_id, with_for_update=True)
    assert run is not None
    problems, finished = session.execute(
        select(
            select(func.count())
            .where(Problem.run_id == run_id, Problem.phase == 2)
            .scalar_subquery(),
            select(func.count())
            .where(AttemptCount.run_id == run_id, AttemptCount.state != "pending")
            .scalar_subquery(),
        )
    ).one()
    if finished < problems:
        return []
    joint = settings.sampler.mode == "joint"
    stage: shards.Stage = "joint" if joint else "phase2"
    files = shards.registered(session, run_id, stage)
    if not files:
        drop = contaminated(session, run_id, settings)
        solved = session.scalars(
            select(AttemptCount.problem_id)
            .where(AttemptCount.run_id == run_id, AttemptCount.state == "solved")
            .order_by(AttemptCount.problem_id)
        ).all()
        kept = [
            g
            for p in solved
            if p not in drop
            for g in kept_solutions(session, run_id, p, settings.sampler.keep_k)
        ]
        rows = _rows(session, run_id, kept, "rejection", settings)
        if joint:
            phase1 = build_phase1_set(session, run_id, run.seed, drop)
            rows = _rows(session, run_id, phase1.kept, "multi-turn", settings) + rows
        path = shards.shard_path(settings.common.data_dir, run_id, stage)
        files = [shards.write_jsonl(rows, path)]
        shards.register(session, run_id, stage, files)
    elif not again:
        return []
    base, parent = (settings.inference.model, "") if joint else (checkpoint.path, checkpoint.id)
    return _unless_trained(session, shards.manifest(run_id, stage, files, base, parent))


def _unless_trained(session: Session, manifest: ShardManifest) -> list[Message]:
    """The manifest, unless a checkpoint was already trained on it (nothing left to announce)."""
    trained = session.scalar(
        select(func.count()).where(CheckpointRow.shard_id == manifest.shard_id)
    )
    return [] if trained else [manifest]


def _generations(
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


def _rows(
    session: Session,
    run_id: str,
    samples: list[VerdictRow] | list[GenerationRow],
    source: Source,
    settings: Settings,
) -> list[dict]:
    """Shard rows: the last turn is the completion (the long CoT, or the single answer)."""
    gens = _generations(session, run_id, [s.sample_id for s in samples])
    questions = dict(
        session.execute(
            select(Problem.problem_id, Problem.question).where(Problem.run_id == run_id)
        ).all()
    )
    system = load_prompts(settings.generator.prompt_version).system
    return [
        {
            **render(
                system,
                questions[s.problem_id],
                gens[s.sample_id].turns[-1],
                source,
                settings.sampler,
            ),
            "source": source,
            "run_id": run_id,
            "problem_id": s.problem_id,
            "sample_id": s.sample_id,
        }
        for s in samples
    ]
