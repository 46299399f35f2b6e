"""The reconciler: work that was published but never finished is found in the database and
published again, so nothing is lost (a broker that lost its messages, a crash between a write
and a publish). It runs in control-svc: once at start-up, then every
``control.reconcile_interval_s``. It never does a stage's work itself: it re-sends the message
that makes the stage do it, and the stages' idempotent writes make a second copy harmless.

One pass:

1. ``ensure_topics``: a restarted in-memory broker has none.
2. Every run that is not complete or cancelled: marked ``complete`` once every stage is done;
   otherwise its unfinished work is collected (``owed``): phase-1 jobs and dialogues, the
   verifier's message of a phase-1 set that was never sealed, phase-2 jobs of pending problems,
   manifests of shards nothing was trained on, and ready checkpoints whose phase 2 never started
   or whose evaluation is missing.
3. What is due is published. At start-up everything is due. Later, a message is due when it has
   been unfinished for an interval while the consumers of its stage were idle (every message on
   their topics consumed and committed). Every service commits its input only after publishing
   its output, so idle consumers plus unfinished work means the work was lost; work that is
   merely queued or in hand is never published twice. Consumers are idempotent anyway.
4. The broker-side and progress gauges are measured (``control_svc.collector``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from prometheus_client import Counter as MetricCounter
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_svc.collector import collect
from shared.core import shards
from shared.core.bus import Publisher, ensure_topics, topic_name
from shared.core.db import (
    AttemptCount,
    CheckpointRow,
    EvalResult,
    Problem,
    Run,
    ShardRow,
    VerdictRow,
)
from shared.core.messages import (
    ALL_TOPICS,
    CHECKPOINTS,
    DIALOGUES,
    PROBLEMS,
    TOPIC_OF,
    TRAINING_SHARDS,
    VERIFIED_SAMPLES,
    CheckpointReady,
    Dialogue,
    Message,
    ProblemJob,
    ShardManifest,
    VerifiedSamples,
    consumer_groups,
)
from shared.core.runs import (
    is_complete,
    pending_jobs,
    run_progress,
    stored_verdicts,
    unfinished_phase1,
)
from shared.core.settings import CommonSettings, Settings

log = logging.getLogger(__name__)

REPUBLISHED = MetricCounter(
    "dualphase_reconciler_republished", "Messages the reconciler published again.", ["kind"]
)
PASSES = MetricCounter("dualphase_reconciler_passes", "Reconciler passes, by outcome.", ["outcome"])

# The topics each stage's work travels through until it is in the database; their consumer
# groups come from the bus's table (``messages.SUBSCRIPTIONS``).
STAGES = {
    "work": [PROBLEMS, DIALOGUES, VERIFIED_SAMPLES],
    "train": [TRAINING_SHARDS],
    "eval": [CHECKPOINTS],
}
# Which stage's consumers must be idle before a message of each type is published again.
STAGE_OF: dict[type[Message], str] = {
    ProblemJob: "work",
    Dialogue: "work",
    VerifiedSamples: "work",
    ShardManifest: "train",
    CheckpointReady: "eval",
}


class Reconciler:
    """Runs the passes and remembers since when each unfinished message has been waiting."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], publisher: Publisher
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.publisher = publisher
        self.waiting: dict[str, float] = {}  # message -> monotonic time it was first seen
        self.stats = {"passes": 0, "failed_passes": 0, "republished": 0, "completed_runs": 0}

    def run(self, stop: threading.Event) -> None:
        """A forced pass now, then a pass every interval until ``stop`` is set."""
        force = True
        while True:
            try:
                self.reconcile(force)
                collect(self.settings.common, self.sessions)
                force = False
                PASSES.labels("ok").inc()
            except Exception:  # database or broker down: the next pass tries again
                log.exception("reconciler pass failed; next one in %.0f s", self.interval)
                self.stats["failed_passes"] += 1
                PASSES.labels("failed").inc()
            if stop.wait(self.interval):
                return

    @property
    def interval(self) -> float:
        return self.settings.control.reconcile_interval_s

    def reconcile(self, force: bool = False) -> dict[str, int]:
        """One pass; returns how many messages of each kind were published again."""
        ensure_topics(self.settings.common, ALL_TOPICS)
        # Idleness first, the database second: if a stage is idle now, nothing in flight can
        # change what the database says about it next.
        idle = {stage for stage, topics in STAGES.items() if consumed(self.settings.common, topics)}
        with self.sessions() as session:
            runs = session.scalars(select(Run.id).where(Run.status == "running")).all()
        unfinished = [m for run_id in runs for m in self._unfinished(run_id)]
        now = time.monotonic()
        waiting = {_key(m): self.waiting.get(_key(m), now) for m in unfinished}
        due = [
            m
            for m in unfinished
            if force or (STAGE_OF[type(m)] in idle and now - waiting[_key(m)] >= self.interval)
        ]
        for message in due:
            self.publisher.publish(TOPIC_OF[type(message)], message)
            waiting[_key(message)] = now  # and wait another interval before the next copy
        self.waiting = waiting
        counts = Counter(type(m).__name__ for m in due)
        for kind, n in counts.items():
            REPUBLISHED.labels(kind).inc(n)
        self.stats["passes"] += 1
        self.stats["republished"] += len(due)
        if due:
            log.info("reconciler re-published %s (idle stages: %s)", dict(counts), sorted(idle))
        return dict(counts)

    def _unfinished(self, run_id: str) -> list[Message]:
        """Every message still owed to this run; marks the run complete when none is."""
        if is_complete(run_progress(self.sessions, run_id)):
            with self.sessions.begin() as session:
                run = session.get_one(Run, run_id, with_for_update=True)
                if run.status == "running":  # not cancelled in the meantime
                    run.status = "complete"
            self.stats["completed_runs"] += 1
            log.info("run %s complete", run_id)
            return []
        return owed(self.sessions, run_id, self.settings)

    def status(self) -> dict[str, Any]:
        return {"reconciler": {**self.stats, "waiting": len(self.waiting)}}


def owed(sessions: sessionmaker[Session], run_id: str, settings: Settings) -> list[Message]:
    """Every message a run is still owed: the work of each stage that was published (or was due
    to be) and never finished."""
    jobs, dialogues = unfinished_phase1(sessions, run_id)
    with sessions() as session:
        return [
            *jobs,
            *dialogues,
            *unsealed_phase1(session, run_id),
            *pending_jobs(session, run_id, settings.sampler.schedule),
            *unannounced_shards(session, run_id, settings.inference.model),
            *stalled_checkpoints(session, run_id, settings),
        ]


def unsealed_phase1(session: Session, run_id: str) -> list[Message]:
    """The verifier's message of the last phase-1 problem when every phase-1 problem has its
    verdicts but no phase-1 shard was written (the sampler never received that message): on it,
    the sampler seals the set."""
    problems = session.scalars(
        select(Problem.problem_id)
        .where(Problem.run_id == run_id, Problem.phase == 1)
        .order_by(Problem.problem_id)
    ).all()
    judged = session.scalar(
        select(func.count(func.distinct(VerdictRow.problem_id))).where(
            VerdictRow.run_id == run_id, VerdictRow.phase == 1
        )
    )
    if not problems or judged < len(problems) or shards.registered(session, run_id, "phase1"):
        return []
    return [stored_verdicts(session, run_id, problems[-1])]


def unannounced_shards(session: Session, run_id: str, base_model: str) -> list[Message]:
    """The manifest of every written shard nothing was trained on (its announcement was lost, or
    the trainer crashed while training it)."""
    stages = session.scalars(
        select(ShardRow.stage).where(ShardRow.run_id == run_id).distinct().order_by(ShardRow.stage)
    ).all()
    manifests = [shards.manifest(session, run_id, stage, base_model) for stage in stages]
    return [m for m in manifests if not shards.trained(session, m.shard_id)]


def stalled_checkpoints(session: Session, run_id: str, settings: Settings) -> list[Message]:
    """Ready checkpoints whose announcement did not arrive: an M1 without phase 2 started (in a
    run of two phases), or any checkpoint without all its evaluation results."""
    phases = session.get_one(Run, run_id).config.get("sampler", {}).get("phases", 2)
    # M1's announcement reached the sampler when phase 2 started (its problems got attempt
    # counts) or, a run without phase-2 problems, when the last shard was sealed at once.
    started = session.scalar(select(func.count()).where(AttemptCount.run_id == run_id)) or any(
        shards.registered(session, run_id, stage) for stage in ("joint", "phase2")
    )
    evaluated = dict(
        session.execute(
            select(EvalResult.checkpoint_id, func.count())
            .where(EvalResult.run_id == run_id)
            .group_by(EvalResult.checkpoint_id)
        ).all()
    )
    expected = len(settings.eval.benchmarks) * len(settings.eval.modes)
    rows = session.scalars(
        select(CheckpointRow)
        .where(CheckpointRow.run_id == run_id, CheckpointRow.status == "ready")
        .order_by(CheckpointRow.id)
    ).all()
    return [
        CheckpointReady(
            run_id=run_id,
            checkpoint_id=row.id,
            stage=row.stage,  # type: ignore[arg-type]
            path=row.path,
            parent_checkpoint_id=row.parent_id,
            shard_id=row.shard_id,
        )
        for row in rows
        if (row.stage == "M1" and phases == 2 and not started)
        or evaluated.get(row.id, 0) < expected
    ]


def consumed(common: CommonSettings, topics: list[str]) -> bool:
    """Whether each group has committed everything on its topics (nothing queued or in hand)."""
    admin = KafkaAdminClient(bootstrap_servers=common.kafka_bootstrap)
    probe = KafkaConsumer(bootstrap_servers=common.kafka_bootstrap, enable_auto_commit=False)
    try:
        for base, group in [(t, g) for t in topics for g in consumer_groups(t)]:
            topic = topic_name(common, base)
            partitions = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic)]
            ends = probe.end_offsets(partitions)
            group_id = common.topic_prefix + group
            committed = admin.list_group_offsets(group_id).get(group_id, {})
            done = {tp: committed[tp].offset if tp in committed else 0 for tp in partitions}
            if any(ends[tp] > done[tp] for tp in partitions):
                return False
            if _records_from(probe, {tp: done[tp] for tp in partitions if ends[tp]}):
                return False
        return True
    finally:
        probe.close()
        admin.close()


def _records_from(probe: KafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
    """Whether a partition holds a record at or after its offset. Tansu reports a partition's
    end as the base offset of its last record batch + 1, so after a batch of several messages
    (``publish_many``) a group can have committed that "end" with messages still unconsumed:
    the phase-1 and oracle manifests were announced twice that way."""
    if not offsets:
        return False
    probe.assign(list(offsets))
    for tp, offset in offsets.items():
        probe.seek(tp, offset)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if any(probe.poll(timeout_ms=250).values()):
            return True
    return False


def _key(message: Message) -> str:
    return f"{type(message).__name__}:{message.model_dump_json()}"
