"""Does a consumer keep consuming after the in-memory broker restarts on the same port?

A ``shared.core.consumer.Consumer`` takes 10 messages, the broker restarts, 3 more are
published; prints which of them were consumed and when. ``--without-fix`` turns off the
consumer's restart from the committed offsets after a re-join
(``Consumer._start_from_committed``) for comparison.

    python benchmarks/broker_restart.py [--without-fix]
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from dualphase.broker import EmbeddedBroker
from shared.core import consumer as consumer_module
from shared.core.bus import Publisher, ensure_topics
from shared.core.consumer import Consumer
from shared.core.messages import PROBLEMS, ProblemJob
from shared.core.settings import CommonSettings


def job(i: int) -> ProblemJob:
    return ProblemJob(
        run_id="r",
        kind="dialogue",
        problem_id=f"p{i}",
        job_id=f"j{i}",
        phase=1,
        question="q",
        gold="1",
    )


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    if "--without-fix" in sys.argv:
        consumer_module._Assignments.on_partitions_assigned = lambda self, assigned: None  # type: ignore[method-assign]
    broker = EmbeddedBroker().start()
    common = CommonSettings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix="restart-",
        partitions=2,
        session_timeout_ms=6000,
    )
    ensure_topics(common, [PROBLEMS])
    got: list[tuple[str, float]] = []
    publisher = Publisher(common)
    consumer = Consumer(
        common,
        PROBLEMS,
        "probe",
        ProblemJob,
        lambda m: got.append((m.job_id, time.monotonic())),
        publisher,
    )
    thread = threading.Thread(target=consumer.run)
    thread.start()
    for i in range(10):
        publisher.publish(PROBLEMS, job(i))
    while len(got) < 10:
        time.sleep(0.2)
    port = broker.port
    broker.stop()
    broker = EmbeddedBroker(port).start()
    restarted = time.monotonic()
    for i in range(10, 13):
        publisher.publish(PROBLEMS, job(i))
    deadline = time.monotonic() + 60
    while len(got) < 13 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = [(j, round(t - restarted, 1)) for j, t in got[10:]]
    print(f"consumed after the restart: {len(after)} of 3: {after} (seconds after the restart)")
    consumer.stop()
    thread.join()
    publisher.close()
    broker.stop()


if __name__ == "__main__":
    main()
