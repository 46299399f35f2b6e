"""A consumer process for the crash tests: ProblemJob messages -> rows in `problems`.

    python tests/bus_worker.py BOOTSTRAP PREFIX GROUP DB_URL DELIVERIES_FILE [DELAY_S]

Each delivery is appended to DELIVERIES_FILE (so a test can see redeliveries). The handler sleeps
DELAY_S / 2 before and after its database write, so that a SIGKILL lands both before a write and
between a write and its commit.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.core.bus import Publisher
from shared.core.consumer import Consumer
from shared.core.db import Problem, insert_ignore, make_engine, make_sessionmaker, transaction
from shared.core.messages import PROBLEMS, Message, ProblemJob
from shared.core.settings import CommonSettings


def problem_writer(
    db_url: str, delay_s: float = 0.0, deliveries: Path | None = None
) -> Callable[[Message], None]:
    """A handler writing one `problems` row per job, idempotently."""
    factory = make_sessionmaker(make_engine(db_url))

    def handle(job: Message) -> None:
        assert isinstance(job, ProblemJob)
        print(f"handling {job.problem_id}", flush=True)
        time.sleep(delay_s / 2)
        row = {
            "run_id": job.run_id,
            "problem_id": job.problem_id,
            "phase": job.phase,
            "question": job.question,
            "gold": job.gold,
            "dataset": job.dataset,
        }
        with transaction(factory) as session:
            insert_ignore(session, Problem, [row])
        if deliveries is not None:
            with deliveries.open("a") as f:
                f.write(job.problem_id + "\n")
        time.sleep(delay_s / 2)

    return handle


def main() -> None:
    bootstrap, prefix, group, db_url, deliveries = sys.argv[1:6]
    delay_s = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    logging.basicConfig(level=logging.INFO)
    common = CommonSettings(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        session_timeout_ms=6000,
        partitions=2,
        stop_grace_s=2.0,
    )
    publisher = Publisher(common)
    handler = problem_writer(db_url, delay_s, Path(deliveries))
    Consumer(common, PROBLEMS, group, ProblemJob, handler, publisher).run()
    publisher.close()


if __name__ == "__main__":
    main()
