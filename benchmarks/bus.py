"""Bus throughput: messages per second through produce -> consume -> database write -> commit.

    python benchmarks/bus.py [--messages 1000] [--no-write-docs]

Runs an embedded Tansu broker, then for 1 and 4 partitions and for SQLite and PostgreSQL: starts
one consumer process per partition in one group, waits until the group holds every partition,
publishes N ProblemJob messages, and times until every row is in the database and every offset
is committed. Writes the "## Bus" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

import psycopg
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select

from dualphase.broker import EmbeddedBroker
from shared.core.bus import Publisher, ensure_topics, topic_name
from shared.core.consumer import Consumer
from shared.core.db import (
    Base,
    Problem,
    Run,
    insert_ignore,
    make_engine,
    make_sessionmaker,
    transaction,
)
from shared.core.messages import PROBLEMS, Message, ProblemJob
from shared.core.settings import CommonSettings

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
DEADLINE_S = 120.0  # hang guard for one configuration


def consumer_process(
    common: CommonSettings, group: str, db_url: str, assigned: Synchronized, stop: Event
) -> None:
    """One group member: writes a `problems` row per message (the services' write pattern)."""
    factory = make_sessionmaker(make_engine(db_url))

    def write(job: Message) -> None:
        assert isinstance(job, ProblemJob)
        row = {
            "run_id": job.run_id,
            "problem_id": job.problem_id,
            "phase": job.phase,
            "question": job.question,
            "gold": job.gold,
        }
        with transaction(factory) as session:
            insert_ignore(session, Problem, [row])

    publisher = Publisher(common)
    consumer = Consumer(common, PROBLEMS, group, ProblemJob, write, publisher)
    thread = threading.Thread(target=consumer.run)
    thread.start()
    while not stop.wait(0.2):  # report the assignment to the parent
        with assigned.get_lock():
            assigned.value = len(consumer.status()["assigned_partitions"])
    consumer.stop()
    thread.join()
    publisher.close()


def committed_total(common: CommonSettings, group: str) -> int:
    probe = KafkaConsumer(
        bootstrap_servers=common.kafka_bootstrap, group_id=common.topic_prefix + group
    )
    topic = topic_name(common, PROBLEMS)
    total = sum(probe.committed(TopicPartition(topic, p)) or 0 for p in range(common.partitions))
    probe.close()
    return total


def measure(bootstrap: str, db_url: str, partitions: int, n: int) -> tuple[float, float]:
    """(publish msgs/s, end-to-end msgs/s) for one configuration."""
    common = CommonSettings(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}-",
        partitions=partitions,
        session_timeout_ms=6000,
    )
    ensure_topics(common, [PROBLEMS])
    # A fresh group per configuration: Tansu never assigns partitions to a group that was
    # subscribed to another topic before (the configurations have their own topics).
    group = "writers"  # Consumer puts the topic prefix in front
    run_id = f"bench-{uuid.uuid4().hex[:6]}"
    engine = make_engine(db_url)
    with transaction(make_sessionmaker(engine)) as session:
        session.add(Run(id=run_id, config={}))

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    counts = [ctx.Value("i", 0) for _ in range(partitions)]
    members = [
        ctx.Process(target=consumer_process, args=(common, group, db_url, c, stop), daemon=True)
        for c in counts
    ]
    for member in members:
        member.start()
    # Time only the steady state: wait until every member holds a partition.
    deadline = time.monotonic() + DEADLINE_S
    while sum(c.value for c in counts) < partitions or min(c.value for c in counts) == 0:
        if not all(m.is_alive() for m in members) or time.monotonic() > deadline:
            raise RuntimeError(f"group never formed: partitions held {[c.value for c in counts]}")
        time.sleep(0.2)

    jobs = [
        ProblemJob(
            run_id=run_id,
            kind="dialogue",
            problem_id=f"p{i}",
            job_id=f"j{i}",
            phase=1,
            question=f"What is {i} + 1?",
            gold=str(i + 1),
        )
        for i in range(n)
    ]
    publisher = Publisher(common)
    started = time.perf_counter()
    publisher.publish_many(PROBLEMS, list(jobs))
    published = time.perf_counter()
    count = select(func.count()).select_from(Problem).where(Problem.run_id == run_id)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        with engine.connect() as conn:
            rows = conn.execute(count).scalar_one()
        if rows == n and committed_total(common, group) == n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{rows}/{n} rows, {committed_total(common, group)} committed")
        time.sleep(0.05)
    finished = time.perf_counter()
    publisher.close()
    stop.set()
    for member in members:
        member.join()
    engine.dispose()
    return n / (published - started), n / (finished - started)


def write_docs(table: str, command: str) -> None:
    """Replace (or add, as the first section) the "## Bus" section of docs/benchmarks.md."""
    load = os.getloadavg()[0]
    about = (
        "Messages per second through produce -> consume -> database write -> offset commit, "
        "timed from the first publish until every row is written and every offset committed "
        "(the consumer group already formed). One consumer process per partition, all in one "
        "group; the handler inserts one `problems` row per message with `insert_ignore`; offsets "
        "are committed per message. Publish = `Publisher.publish_many` alone. Embedded Tansu "
        f"broker (memory storage) on the shared 2-core dev machine (load average {load:.1f} "
        "at the end of the run, other engineers' tests running), so compare rows of one run only."
    )
    section = f"## Bus\n\n{textwrap.fill(about, 100)}\n\nCommand: `{command}`\n\n{table}\n\n"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\n"
    existing = re.compile(r"^## Bus\n.*?(?=^## |\Z)", re.S | re.M)
    if existing.search(text):
        text = existing.sub(lambda _: section, text)
    elif "\n## " in text:
        head, rest = text.split("\n## ", 1)
        text = f"{head.rstrip()}\n\n{section}## {rest}"
    else:
        text = f"{text.rstrip()}\n\n{section}"
    DOCS.write_text(text.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="Messages per configuration.")
    parser.add_argument("--no-write-docs", action="store_true", help="Only print the table.")
    args = parser.parse_args()

    pg_name = f"dualphase_bench_{uuid.uuid4().hex[:8]}"
    admin = POSTGRES.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{pg_name}"')
    rows = [
        "| database | partitions (consumers) | publish msg/s | end-to-end msg/s |",
        "|---|---|---|---|",
    ]
    try:
        with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
            databases = {
                "SQLite": f"sqlite:///{tmp}/bench.db",
                "PostgreSQL": f"{POSTGRES}/{pg_name}",
            }
            for url in databases.values():
                Base.metadata.create_all(make_engine(url))
            for name, url in databases.items():
                for partitions in (1, 4):
                    publish, e2e = measure(broker.bootstrap, url, partitions, args.messages)
                    rows.append(f"| {name} | {partitions} | {publish:,.0f} | {e2e:,.0f} |")
                    print(rows[-1], flush=True)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    table = "\n".join(rows)
    print(table)
    if not args.no_write_docs:
        write_docs(table, " ".join(["python benchmarks/bus.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
