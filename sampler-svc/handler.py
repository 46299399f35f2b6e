"""sampler-svc's handlers: record what arrives, advance the stage it belongs to, return what to
publish after the commit. The stages live in their own modules:

- ``balance``: the phase-1 set, balanced initial-right : initial-wrong = 1:1;
- ``rounds``: phase 2's difficulty-aware rounds (``attempt_counts`` is the state);
- ``sealing``: the training shards and their manifests.

Every function takes a SQLAlchemy session inside the caller's transaction; the database is the
whole state, so a restarted sampler goes on from it (the control plane publishes again what a
crash between commit and publish lost).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from sampler_svc import rounds, sealing
from shared.core.bus import Publisher
from shared.core.db import insert_verdicts
from shared.core.messages import CheckpointReady, Message, VerifiedSamples
from shared.core.settings import Settings


def make_handlers(
    settings: Settings, sessions: sessionmaker[Session], publisher: Publisher
) -> tuple[Callable[[Message], None], Callable[[Message], None]]:
    """Consumer handlers for ``verified-samples`` and ``checkpoints``: write, commit, publish.

    Publishing after the commit means a crash in between loses messages, never state; the
    control plane publishes them again.
    """

    def verdicts(message: Message) -> None:
        assert isinstance(message, VerifiedSamples)
        with sessions.begin() as session:
            out = on_verdicts(session, message, settings)
        publisher.publish_all(out)

    def checkpoint(message: Message) -> None:
        assert isinstance(message, CheckpointReady)
        with sessions.begin() as session:
            out = on_checkpoint(session, message, settings)
        publisher.publish_all(out)

    return verdicts, checkpoint


def on_verdicts(session: Session, msg: VerifiedSamples, settings: Settings) -> list[Message]:
    """Record the verdicts of one job; return what to publish next: the problem's next round,
    or, once it is final, the shard if it was the last one."""
    insert_verdicts(session, msg)  # unless present: the verifier may have written them
    if msg.phase == 1:
        return list(sealing.seal_phase1(session, msg.run_id, settings))
    job = rounds.finish_round(session, msg, settings.sampler.schedule)
    return [job] if job else list(sealing.seal_phase2(session, msg.run_id, settings))


def on_checkpoint(session: Session, msg: CheckpointReady, settings: Settings) -> list[Message]:
    """M1 is ready: start phase 2 (and seal at once if the run has no phase-2 problem)."""
    if msg.stage != "M1" or settings.sampler.phases == 1:
        return []
    jobs = rounds.start_phase2(session, msg, settings.sampler.schedule)
    return [*jobs, *sealing.seal_phase2(session, msg.run_id, settings)]
