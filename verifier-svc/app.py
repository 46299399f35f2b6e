"""verifier-svc: consumes `dialogues`, grades and filters, publishes `verified-samples`."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.core.consumer import Consumer
from shared.core.db import RuleCount, insert_ignore, insert_verdicts
from shared.core.messages import DIALOGUES, VERIFIED_SAMPLES, Dialogue, VerifiedSamples
from shared.core.service import run_service, setup
from shared.core.settings import VerifierSettings, load_settings
from shared.method.grading import Grader
from verifier_svc.handler import rule_tally, verify_dialogue


def main() -> None:
    settings = load_settings()
    engine, sessions, publisher = setup(settings.common)
    grader = Grader(timeout_s=settings.verifier.grade_timeout_s, workers=settings.verifier.workers)
    counts = {"verdicts": 0, "accepted": 0, "redelivered": 0}

    def handle(msg: Dialogue) -> None:
        out = verify_dialogue(msg, grader, settings.verifier)
        with sessions.begin() as session:
            # All verdicts of a message are written in one transaction: either all are new, or
            # this is a redelivery and the rule counts were already added.
            if insert_verdicts(session, out) == len(out.verdicts):
                _add_rule_counts(session, out, settings.verifier)
            else:
                counts["redelivered"] += 1
        publisher.publish(VERIFIED_SAMPLES, out)
        counts["verdicts"] += len(out.verdicts)
        counts["accepted"] += sum(v.accepted for v in out.verdicts)

    consumer = Consumer.subscribe(settings.common, "verifier", DIALOGUES, handle, publisher)
    try:
        run_service(
            "verifier-svc",
            settings.common,
            settings.verifier.port,
            engine,
            publisher,
            [consumer],
            lambda: dict(counts),
        )
    finally:
        grader.close()


def _add_rule_counts(session: Session, out: VerifiedSamples, settings: VerifierSettings) -> None:
    tally = rule_tally(out, settings)
    insert_ignore(session, RuleCount, [dict(run_id=out.run_id, rule=r) for r in tally])
    for rule, (passed, failed) in tally.items():
        session.execute(
            update(RuleCount)
            .where(RuleCount.run_id == out.run_id, RuleCount.rule == rule)
            .values(passed=RuleCount.passed + passed, failed=RuleCount.failed + failed)
        )
