"""The bus against the real Tansu broker and real databases (SQLite and PostgreSQL).

Proves the delivery contract of DESIGN.md: at-least-once with idempotent writes, a DLQ for what
cannot be processed, retries that lose nothing, and crash/stop behaviour of a consumer process.
"""

from __future__ import annotations

import base64
import json
import random
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from bus_worker import problem_writer
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from shared.core.bus import PermanentError, Publisher, RetryableError, ensure_topics, topic_name
from shared.core.consumer import Consumer
from shared.core.db import Problem, Run, make_engine, make_sessionmaker, transaction
from shared.core.messages import (
    DIALOGUES,
    PROBLEMS,
    DeadLetter,
    Dialogue,
    Generation,
    Message,
    ProblemJob,
    SamplingParams,
)
from shared.core.settings import CommonSettings

WORKER = Path(__file__).with_name("bus_worker.py")
TIMEOUT_S = 60.0  # hang guard only: every wait normally ends in seconds


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def group(common: CommonSettings) -> str:
    """The test's consumer group (Consumer prefixes it with the test's own topic prefix)."""
    return "group"


def new_run(db_url: str) -> str:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    with transaction(make_sessionmaker(make_engine(db_url))) as session:
        session.add(Run(id=run_id, config={}))
    return run_id


def jobs(run_id: str, n: int) -> list[ProblemJob]:
    return [
        ProblemJob(
            run_id=run_id,
            kind="dialogue",
            problem_id=f"p{i}",
            job_id=f"{run_id}-p{i}-0",
            phase=1,
            question=f"What is {i} + {i}?",
            gold=str(2 * i),
        )
        for i in range(n)
    ]


def problem_ids(db_url: str, run_id: str) -> list[str]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(Problem.problem_id).where(Problem.run_id == run_id)).all()
    engine.dispose()
    return [r[0] for r in rows]


@contextmanager
def running(consumer: Consumer) -> Iterator[Consumer]:
    """Run a consumer in a thread for the duration of the block."""
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        thread.join(TIMEOUT_S)
        assert not thread.is_alive(), "consumer did not stop"


def committed_total(common: CommonSettings, group: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    probe = KafkaConsumer(
        bootstrap_servers=common.kafka_bootstrap,
        group_id=common.topic_prefix + group,
        enable_auto_commit=False,
    )
    topic = topic_name(common, PROBLEMS)
    offsets = [probe.committed(TopicPartition(topic, p)) for p in range(common.partitions)]
    probe.close()
    return sum(o or 0 for o in offsets)


def read_topic(common: CommonSettings, topic: str, count: int) -> list[bytes]:
    """The first `count` values of a topic, read without a consumer group."""
    reader = KafkaConsumer(bootstrap_servers=common.kafka_bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in range(common.partitions)]
    reader.assign(partitions)
    reader.seek_to_beginning(*partitions)
    values: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(values) < count and time.monotonic() < deadline:
        for records in reader.poll(timeout_ms=500).values():
            values += [r.value for r in records]
    reader.close()
    return values


@pytest.fixture
def publisher(common: CommonSettings) -> Iterator[Publisher]:
    ensure_topics(common, [PROBLEMS])
    publisher = Publisher(common)
    yield publisher
    publisher.close()


def test_round_trip_writes_every_message_once(
    common: CommonSettings, publisher: Publisher, db_url: str
) -> None:
    run_id = new_run(db_url)
    publisher.publish_many(PROBLEMS, list(jobs(run_id, 20)))
    consumer = Consumer(
        common, PROBLEMS, group(common), ProblemJob, problem_writer(db_url), publisher
    )
    with running(consumer):
        wait_for(lambda: consumer.status()["processed"] == 20, "20 messages processed")
        wait_for(lambda: consumer.status()["lag_total"] == 0, "lag 0")
        status = consumer.status()
    assert sorted(problem_ids(db_url, run_id)) == sorted(f"p{i}" for i in range(20))
    assert status["dlq"] == status["retries"] == 0
    assert status["assigned_partitions"] == [0, 1]
    topic = topic_name(common, PROBLEMS)
    assert REGISTRY.get_sample_value("dualphase_messages_in_total", {"topic": topic}) == 20
    assert committed_total(common, group(common)) == 20


def test_a_member_joins_while_another_is_busy_with_a_long_handler(
    common: CommonSettings, publisher: Publisher
) -> None:
    # A replica added with `--scale` gets partitions at once, not after the busy member's batch
    # (which, before members polled while busy, held the rebalance for as long as it ran).
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    publisher.publish_many(PROBLEMS, jobs(run_id, 8))
    busy, release = threading.Event(), threading.Event()
    handled: list[str] = []

    def slow(job: ProblemJob) -> None:
        if not busy.is_set():
            busy.set()
            release.wait(4 * TIMEOUT_S)  # the first message holds its member until released
        handled.append(job.problem_id)

    def quick(job: ProblemJob) -> None:
        handled.append(job.problem_id)

    a = Consumer(common, PROBLEMS, group(common), ProblemJob, slow, publisher)
    b = Consumer(common, PROBLEMS, group(common), ProblemJob, quick, publisher)
    with running(a):
        wait_for(busy.is_set, "the first member busy")
        with running(b):
            wait_for(
                lambda: b.status()["assigned_partitions"] != [],
                "the second member's share while the first is busy",
                timeout_s=30,
            )
            release.set()
            wait_for(lambda: committed_total(common, group(common)) == 8, "every job committed")
    assert sorted(set(handled)) == sorted(f"p{i}" for i in range(8))


def test_redelivered_message_leaves_one_row(
    common: CommonSettings, publisher: Publisher, db_url: str
) -> None:
    run_id = new_run(db_url)
    first, second = jobs(run_id, 2)
    for job in (first, first, second, first):
        publisher.publish(PROBLEMS, job)
    consumer = Consumer(
        common, PROBLEMS, group(common), ProblemJob, problem_writer(db_url), publisher
    )
    with running(consumer):
        wait_for(lambda: consumer.status()["processed"] == 4, "4 deliveries processed")
    assert sorted(problem_ids(db_url, run_id)) == ["p0", "p1"]


def test_malformed_and_poison_messages_go_to_dlq_and_consumer_goes_on(
    common: CommonSettings, db_url: str
) -> None:
    common = common.model_copy(update={"partitions": 1})  # one partition: order is the test
    ensure_topics(common, [PROBLEMS])
    publisher = Publisher(common)
    run_id = new_run(db_url)
    good, poison, last = jobs(run_id, 3)
    missing_field = json.loads(good.to_bytes())
    del missing_field["problem_id"]
    bad = [b'{"run_id": "r", "kind": ', json.dumps(missing_field).encode()]
    topic = topic_name(common, PROBLEMS)
    publisher.publish(PROBLEMS, good)
    for value in bad:
        publisher.send(topic, "bad", value)
    publisher.publish(PROBLEMS, poison)
    publisher.publish(PROBLEMS, last)

    write = problem_writer(db_url)

    def handler(job: Message) -> None:
        if job == poison:
            raise PermanentError("question is not a math problem")
        write(job)

    consumer = Consumer(common, PROBLEMS, group(common), ProblemJob, handler, publisher)
    with running(consumer):
        wait_for(lambda: consumer.status()["processed"] == 2, "the two good messages")
        status = consumer.status()
    publisher.close()
    assert status["dlq"] == 3
    assert sorted(problem_ids(db_url, run_id)) == ["p0", "p2"]

    letters = [DeadLetter.model_validate_json(v) for v in read_topic(common, f"{topic}.dlq", 3)]
    assert [(d.topic, d.partition, d.offset) for d in letters] == [(topic, 0, o) for o in (1, 2, 3)]
    assert [base64.b64decode(d.value_b64) for d in letters] == [*bad, poison.to_bytes()]
    assert "Invalid JSON" in letters[0].error
    assert "problem_id" in letters[1].error and "Field required" in letters[1].error
    assert letters[2].error == "PermanentError: question is not a math problem"
    assert letters[2].key == "p1"
    assert REGISTRY.get_sample_value("dualphase_dlq_total", {"topic": topic}) == 3
    errors = {
        k: REGISTRY.get_sample_value("dualphase_errors_total", {"topic": topic, "kind": k})
        for k in ("parse", "permanent")
    }
    assert errors == {"parse": 2, "permanent": 1}


def test_batch_handler_poison_goes_alone_to_dlq_with_its_key(
    common: CommonSettings, publisher: Publisher
) -> None:
    common = common.model_copy(update={"partitions": 1})
    ensure_topics(common, [PROBLEMS])
    batch = jobs("run", 6)
    publisher.publish_many(PROBLEMS, list(batch))
    handled: list[Message] = []

    def handle_batch(messages: list[Message]) -> None:
        if batch[2] in messages:
            raise PermanentError("poison")
        handled.extend(messages)

    consumer = Consumer(
        common, PROBLEMS, group(common), ProblemJob, handle_batch, publisher, batch_size=4
    )
    with running(consumer):
        wait_for(lambda: consumer.status()["processed"] == 5, "the 5 good messages")
    assert sorted(m.key() for m in handled) == ["p0", "p1", "p3", "p4", "p5"]
    topic = topic_name(common, PROBLEMS)
    [letter] = [DeadLetter.model_validate_json(v) for v in read_topic(common, f"{topic}.dlq", 1)]
    assert (letter.key, letter.offset, letter.error) == ("p2", 2, "PermanentError: poison")
    assert committed_total(common, group(common)) == 6


def test_retryable_errors_back_off_and_lose_nothing(
    common: CommonSettings, publisher: Publisher, db_url: str
) -> None:
    run_id = new_run(db_url)
    publisher.publish_many(PROBLEMS, list(jobs(run_id, 10)))
    write = problem_writer(db_url)
    failures = [
        RetryableError("db down"),
        RetryableError("db down"),
        OperationalError("INSERT", {}, Exception("connection refused")),
    ]

    def flaky(job: Message) -> None:
        if job.key() == "p3" and failures:
            raise failures.pop(0)
        write(job)

    consumer = Consumer(common, PROBLEMS, group(common), ProblemJob, flaky, publisher)
    with running(consumer):
        wait_for(lambda: consumer.status()["processed"] == 10, "10 messages processed")
        status = consumer.status()
    assert sorted(problem_ids(db_url, run_id)) == sorted(f"p{i}" for i in range(10))
    assert (status["retries"], status["dlq"]) == (3, 0)
    assert committed_total(common, group(common)) == 10


def test_stop_during_back_off_commits_nothing(common: CommonSettings, publisher: Publisher) -> None:
    common = common.model_copy(update={"retry_backoff_s": 60.0})
    publisher.publish(PROBLEMS, jobs("run", 1)[0])
    attempts: list[Message] = []

    def broken(job: Message) -> None:
        attempts.append(job)
        raise RetryableError("broker for downstream topic is down")

    consumer = Consumer(common, PROBLEMS, group(common), ProblemJob, broken, publisher)
    with running(consumer):
        wait_for(lambda: len(attempts) == 1, "first attempt")
    assert committed_total(common, group(common)) == 0  # so the next member gets the message again
    seen: list[Message] = []
    consumer = Consumer(common, PROBLEMS, group(common), ProblemJob, seen.append, publisher)
    with running(consumer):
        wait_for(lambda: len(seen) == 1, "redelivery to a new consumer")
    assert seen == attempts


def start_worker(
    common: CommonSettings, db_url: str, folder: Path, delay_s: float
) -> subprocess.Popen[bytes]:
    """A bus_worker.py process; deliveries and log go to files in `folder`."""
    command = [
        sys.executable,
        str(WORKER),
        common.kafka_bootstrap,
        common.topic_prefix,
        group(common),
        db_url,
        str(folder / "deliveries.txt"),
        str(delay_s),
    ]
    with (folder / "worker.log").open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen[bytes], folder: Path, sig: int = signal.SIGTERM) -> None:
    """Signal the worker and wait; it must exit 0 (its log is the failure message)."""
    worker.send_signal(sig)
    worker.wait(TIMEOUT_S)
    assert worker.returncode == 0, (folder / "worker.log").read_text()[-3000:]


def test_consumer_killed_mid_stream_loses_nothing_after_restart(
    common: CommonSettings, publisher: Publisher, db_url: str, tmp_path: Path
) -> None:
    run_id = new_run(db_url)
    publisher.publish_many(PROBLEMS, list(jobs(run_id, 30)))
    worker = start_worker(common, db_url, tmp_path, delay_s=0.1)
    wait_for(lambda: len(problem_ids(db_url, run_id)) >= 8, "8 rows from the first worker")
    worker.kill()
    worker.wait()
    written_before = len(problem_ids(db_url, run_id))
    assert written_before < 30, "the worker finished before the kill: the test proves nothing"

    worker = start_worker(common, db_url, tmp_path, delay_s=0.0)
    try:
        wait_for(lambda: committed_total(common, group(common)) == 30, "all 30 offsets committed")
    finally:
        stop_worker(worker, tmp_path)
    ids = problem_ids(db_url, run_id)
    assert sorted(ids) == sorted(f"p{i}" for i in range(30))
    delivered = (tmp_path / "deliveries.txt").read_text().split()
    assert set(delivered) == set(ids)  # redeliveries (len(delivered) > 30) changed nothing


def test_sigterm_finishes_message_in_hand_commits_and_exits_0(
    common: CommonSettings, publisher: Publisher, db_url: str, tmp_path: Path
) -> None:
    run_id = new_run(db_url)
    publisher.publish_many(PROBLEMS, list(jobs(run_id, 40)))
    worker = start_worker(common, db_url, tmp_path, delay_s=0.2)
    wait_for(lambda: len(problem_ids(db_url, run_id)) >= 5, "5 rows")
    stop_worker(worker, tmp_path)
    written = len(problem_ids(db_url, run_id))
    assert written < 40, "the worker finished before SIGTERM: the test proves nothing"
    assert committed_total(common, group(common)) == written


def test_sigterm_gives_back_a_message_that_outlasts_the_grace_uncommitted(
    common: CommonSettings, publisher: Publisher, db_url: str, tmp_path: Path
) -> None:
    # A handler that would take 5 minutes (a long batch of generation on a CPU): the worker
    # exits after its 2 s grace, commits nothing, and the message is redelivered to the next.
    run_id = new_run(db_url)
    publisher.publish_many(PROBLEMS, list(jobs(run_id, 3)))
    worker = start_worker(common, db_url, tmp_path, delay_s=600)
    log = tmp_path / "worker.log"
    wait_for(lambda: "handling" in log.read_text(), "a message in hand")
    stop_worker(worker, tmp_path)  # exit 0 within TIMEOUT_S, long before the handler ends
    assert "exiting without committing" in log.read_text()
    assert committed_total(common, group(common)) == 0 and problem_ids(db_url, run_id) == []

    worker = start_worker(common, db_url, tmp_path, delay_s=0.0)
    try:
        wait_for(lambda: committed_total(common, group(common)) == 3, "all 3 offsets committed")
    finally:
        stop_worker(worker, tmp_path)
    assert sorted(problem_ids(db_url, run_id)) == ["p0", "p1", "p2"]


def test_two_megabyte_phase2_result_goes_through_the_broker(common: CommonSettings) -> None:
    # 100 samples of 20 kB of random letters: about 2 MB that compression cannot shrink below
    # Kafka's default 1 MB limit, the size of one paper-scale round (100 samples x 4096 tokens).
    rng = random.Random(0)
    samples = [
        Generation(
            sample_id=f"j-{i}",
            turns=["".join(rng.choices(string.ascii_letters + " ", k=20_000))],
            tokens=[4096],
            finish_reasons=["stop"],
            seed=i,
        )
        for i in range(100)
    ]
    big = Dialogue(
        run_id="run-big",
        problem_id="p",
        job_id="j",
        phase=2,
        round=2,
        gold="1",
        model="m",
        prompt_version="v1",
        params=SamplingParams(),
        samples=samples,
    )
    assert len(big.to_bytes()) > 2_000_000
    ensure_topics(common, [DIALOGUES])
    publisher = Publisher(common)
    publisher.publish(DIALOGUES, big)
    publisher.close()

    received: list[Dialogue] = []
    consumer = Consumer(
        common, DIALOGUES, group(common), Dialogue, received.append, Publisher(common)
    )
    with running(consumer):
        wait_for(lambda: len(received) == 1, "the 2 MB message consumed")
    assert received[0] == big
