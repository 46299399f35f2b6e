"""The consumer loop of the Kafka bus: at-least-once, with a dead-letter topic.

Delivery contract (README.md, "Each service"): a consumer commits a message's offset only after its
handler returned, and handlers write the database idempotently, so a crash causes redelivery,
never loss. A message that cannot be processed by retrying goes to `<topic>.dlq` as a
`DeadLetter` and the consumer goes on; a transient failure (database or broker down) is retried,
with back-off, on the same message.

    publisher = Publisher(common)
    consumer = Consumer.subscribe(common, "generator", PROBLEMS, handle, publisher)
    consumer.run()  # blocks until stop(), SIGTERM or Ctrl-C
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from pydantic import ValidationError

from shared.core import metrics
from shared.core.bus import RETRYABLE, Publisher, topic_name
from shared.core.messages import DeadLetter, Message, subscription
from shared.core.settings import CommonSettings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
LAG_REFRESH_S = 2.0  # end offsets cost a broker round trip: ask at most this often
# A member keeps polling while its handler runs (Consumer._while_polling), so a rebalance (a
# replica joining, a broker restart) never waits for a long handler; this only bounds a member
# whose poll loop itself is stuck.
MAX_POLL_INTERVAL_S = 300
BUSY_POLL_S = 0.5  # how often a member with a handler running answers the group


class _Assignments(ConsumerRebalanceListener):
    """Collects the partitions each rebalance assigns (kafka-python calls it on its IO thread,
    where the consumer may not block: the consumer loop acts on them)."""

    def __init__(self) -> None:
        self.new: set[TopicPartition] = set()
        self.rebalancing_since = 0.0  # monotonic time a (re-)join began; 0 when none is open

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Called as every join begins (the first one too, with nothing to revoke).
        self.rebalancing_since = self.rebalancing_since or time.monotonic()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.new |= set(assigned)
        self.rebalancing_since = 0.0


class Consumer:
    """One member of a consumer group: poll -> parse -> handler -> commit.

    By default one message per poll: the offset committed is always the message just finished
    and a retry is a seek back by one. With ``batch_size`` > 1 (the generator: many problems'
    turns in one model call) the handler gets up to that many messages at once, and their offsets
    are committed together after it returns; if the batch fails, its messages are retried one by
    one so that only a poison message goes to the dead-letter topic.

    Use one group id per (service, topic), e.g. "sampler-checkpoints": on Tansu a group whose
    members once subscribed to another topic never gets partitions (measured on tansu 0.6.0).
    """

    @classmethod
    def subscribe(
        cls,
        common: CommonSettings,
        service: str,
        topic: str,
        handler: Callable[[Any], None],
        publisher: Publisher,
        batch_size: int = 1,
    ) -> Consumer:
        """The consumer of ``service`` on ``topic``: group and message type from the bus's table
        (``messages.SUBSCRIPTIONS``)."""
        sub = subscription(service, topic)
        return cls(common, sub.topic, sub.group, sub.message, handler, publisher, batch_size)

    def __init__(
        self,
        common: CommonSettings,
        base_topic: str,
        group_id: str,
        message_type: type[Message],
        handler: Callable[[Any], None],
        publisher: Publisher,
        batch_size: int = 1,
    ) -> None:
        """``handler`` takes one message, or with ``batch_size`` > 1 a list of up to that many
        (the generator batches turns of many problems into one model call)."""
        self.common = common
        self.batch_size = batch_size
        self.topic = topic_name(common, base_topic)
        self.dlq_topic = self.topic + ".dlq"
        self.group_id = common.topic_prefix + group_id  # stacks sharing a broker stay apart
        self.message_type = message_type
        self.handler = handler
        self.publisher = publisher
        self._stop = threading.Event()
        # The handler runs here, always on this one thread, while the consumer's thread polls.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"handler-{group_id}")
        self._failures = 0  # consecutive retryable failures of the message in hand
        self._next_lag_refresh = 0.0
        self.processed = 0
        self.dlq = 0
        self.retries = 0
        self.errors = 0
        self.rejoins = 0  # fresh joins after a join that never completed (see _membership)
        self.current_key: str | None = None
        self.assigned: list[int] = []
        self.lag: dict[int, int] = {}

    def run(self) -> None:
        """Consume until stop() (or SIGTERM/SIGINT in the main thread); then close."""
        with self._stop_on_signals():
            while not self._stop.is_set():
                self._membership()
        self._worker.shutdown()
        log.info("consumer %s on %s stopped", self.group_id, self.topic)

    def _membership(self) -> None:
        """One membership of the group: consume until stop(), or until a (re-)join has been
        open for ``common.rejoin_after_s``. After a broker restart a re-join sometimes never
        completes (partitions revoked, SyncGroup never answered: measured with Tansu and
        kafka-python 3.0.12); a new member, joining afresh, gets partitions again."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.common.kafka_bootstrap,
            group_id=self.group_id,
            client_id=f"dualphase-{self.group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.common.session_timeout_ms,
            heartbeat_interval_ms=self.common.session_timeout_ms // 3,
            max_poll_interval_ms=MAX_POLL_INTERVAL_S * 1000,
            max_partition_fetch_bytes=self.common.max_message_bytes,
            fetch_max_bytes=max(self.common.max_message_bytes, 50 * 2**20),
        )
        assignments = _Assignments()
        consumer.subscribe([self.topic], listener=assignments)
        try:
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=500, max_records=self.batch_size)
                if assignments.new:
                    # What this poll returned is fetched again from the committed offsets.
                    self._start_from_committed(consumer, assignments)
                    continue
                if self.batch_size == 1:
                    for tp, records in polled.items():
                        self._consume_one(consumer, tp, records[0])
                elif polled:
                    self._consume_batch(consumer, polled)
                self._refresh_lag(consumer)
                since = assignments.rebalancing_since
                if since and time.monotonic() - since > self.common.rejoin_after_s:
                    self.rejoins += 1
                    log.warning(
                        "%s: a join open for %.0f s never completed; joining afresh",
                        self.group_id,
                        time.monotonic() - since,
                    )
                    return
        finally:
            consumer.close(autocommit=False)

    def stop(self) -> None:
        """Ask run() to return after the message in hand (thread-safe, signal-safe)."""
        self._stop.set()

    def _give_back(self) -> None:
        """Exit now, committing nothing: what is in hand is redelivered, and handlers are
        idempotent, so a half-done batch costs time, never data."""
        log.warning(
            "%s: stop took longer than %.0f s; exiting without committing %s (it is redelivered)",
            self.group_id,
            self.common.stop_grace_s,
            self.current_key or "the message in hand",
        )
        logging.shutdown()
        os._exit(0)

    def _start_from_committed(self, consumer: KafkaConsumer, assignments: _Assignments) -> None:
        """After a rebalance, each assigned partition restarts at its committed offset.

        kafka-python keeps the position of a partition that stays assigned across a rebalance.
        After an in-memory broker restarts, that position points into the lost log, and the new
        log's first messages would be skipped (measured with Tansu: jobs the reconciler published
        again were never consumed). A new member starts from the committed offset; so do we.
        """
        new, assignments.new = assignments.new, set()
        try:
            for tp in new & consumer.assignment():
                committed = consumer.committed(tp)
                if committed is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
        except KafkaError as error:
            assignments.new |= new  # the broker is away: again after the next poll
            log.warning("committed offsets of %s unknown: %s", self.topic, error)

    def status(self) -> dict[str, Any]:
        lag = self.lag
        return {
            "topic": self.topic,
            "group_id": self.group_id,
            "processed": self.processed,
            "dlq": self.dlq,
            "retries": self.retries,
            "errors": self.errors,
            "rejoins": self.rejoins,
            "current_key": self.current_key,
            "assigned_partitions": self.assigned,
            "lag": lag,
            "lag_total": sum(lag.values()),
        }

    def _consume_one(
        self, consumer: KafkaConsumer, tp: TopicPartition, record: ConsumerRecord
    ) -> None:
        self._consume_batch(consumer, {tp: [record]})

    def _consume_batch(
        self, consumer: KafkaConsumer, polled: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        records = [r for rs in polled.values() for r in rs]
        keys = [r.key.decode(errors="replace") if r.key else None for r in records]
        self.current_key = keys[0] if len(keys) == 1 else f"{len(keys)} messages"
        try:
            self._while_polling(consumer, lambda: self._process(records))
        except RETRYABLE as error:
            self._failures += 1
            self.retries += 1
            self.errors += 1
            metrics.ERRORS.labels(self.topic, "retryable").inc()
            doubling = 2 ** min(self._failures - 1, 16)
            delay = min(self.common.retry_backoff_s * doubling, MAX_BACKOFF_S)
            log.warning(
                "%s@%d (+%d): retryable %s: %s; retry #%d in %.1f s",
                self.topic,
                records[0].offset,
                len(records) - 1,
                type(error).__name__,
                error,
                self._failures,
                delay,
            )
            for tp, rs in polled.items():
                if tp in consumer.assignment():  # the next poll returns the same messages
                    consumer.seek(tp, rs[0].offset)
            self._stop.wait(delay)  # stop() during back-off: exit without committing
            return
        finally:
            self.current_key = None
        self._failures = 0
        metrics.MESSAGES_IN.labels(self.topic).inc(len(records))
        for tp, rs in polled.items():
            if tp in consumer.assignment():
                self._commit(consumer, tp, rs[-1].offset + 1)
            else:  # a rebalance gave it away meanwhile: its new owner handles it again
                log.info("%s[%d] was reassigned during the batch; not committed", *tp)

    def _while_polling(self, consumer: KafkaConsumer, work: Callable[[], None]) -> None:
        """``work()`` on the handler thread while this thread polls with every partition paused,
        so the member takes part in a rebalance at once instead of after a batch that may take
        an hour. A poll here returns records only of partitions a rebalance has just assigned;
        they are dropped, as every partition restarts at its committed offset after a
        rebalance (_start_from_committed)."""
        future = self._worker.submit(work)
        try:
            while True:
                try:
                    return future.result(timeout=BUSY_POLL_S)  # re-raises the handler's error
                except FutureTimeout:
                    consumer.pause(*consumer.assignment())
                    consumer.poll(timeout_ms=int(BUSY_POLL_S * 1000))
        finally:
            consumer.resume(*consumer.paused())

    def _process(self, records: list[ConsumerRecord]) -> None:
        """Handle records, or dead-letter the ones that fail; retryable errors propagate."""
        parsed: list[tuple[ConsumerRecord, Message]] = []
        for record in records:
            try:
                parsed.append((record, self.message_type.model_validate_json(record.value)))
            except ValidationError as error:
                name = self.message_type.__name__
                self._dead_letter(record, "parse", f"not a valid {name}: {error}")
        if self.batch_size == 1 or len(parsed) == 1:
            for record, message in parsed:
                self._call(record, message)
            return
        started = time.perf_counter()
        try:
            self.handler([message for _, message in parsed])
        except RETRYABLE:
            raise
        except Exception:
            # Find the poison: one at a time, so only the failing messages go to the DLQ.
            log.exception("%s: batch of %d failed; retrying one by one", self.topic, len(parsed))
            for record, message in parsed:
                self._call(record, message)
            return
        metrics.PROCESSING_SECONDS.labels(self.topic).observe(time.perf_counter() - started)
        self.processed += len(parsed)

    def _call(self, record: ConsumerRecord, message: Message) -> None:
        """The handler on one message; a non-retryable failure dead-letters it."""
        started = time.perf_counter()
        try:
            self.handler(message if self.batch_size == 1 else [message])
        except RETRYABLE:
            raise
        except Exception as error:
            log.exception(
                "%s[%d]@%d: handler failed", record.topic, record.partition, record.offset
            )
            self._dead_letter(record, "permanent", f"{type(error).__name__}: {error}")
            return
        metrics.PROCESSING_SECONDS.labels(self.topic).observe(time.perf_counter() - started)
        self.processed += 1

    def _dead_letter(self, record: ConsumerRecord, kind: str, error: str) -> None:
        """Publish the record to the DLQ (a broker error here propagates: retry the message)."""
        log.warning(
            "%s[%d]@%d -> %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self.dlq_topic,
            error,
        )
        # The record's own key: in batch mode current_key names the whole batch.
        key = record.key.decode(errors="replace") if record.key else None
        letter = DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=key,
            error=error,
            value_b64=base64.b64encode(record.value or b"").decode(),
        )
        self.publisher.send(self.dlq_topic, key, letter.model_dump_json().encode())
        self.dlq += 1
        self.errors += 1
        metrics.ERRORS.labels(self.topic, kind).inc()
        metrics.DLQ.labels(self.topic).inc()

    def _commit(self, consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
        try:
            consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
        except KafkaError as error:
            # The work is done and idempotent: a lost commit only means a redelivery later.
            self.errors += 1
            log.warning("commit of %s[%d]@%d failed: %s", tp.topic, tp.partition, offset, error)

    def _refresh_lag(self, consumer: KafkaConsumer) -> None:
        assigned = sorted(consumer.assignment())
        changed = [tp.partition for tp in assigned] != self.assigned
        if time.monotonic() < self._next_lag_refresh and not changed:
            return
        self._next_lag_refresh = time.monotonic() + LAG_REFRESH_S
        try:
            ends = consumer.end_offsets(assigned)
            positions = {tp: consumer.position(tp) for tp in assigned}
        except KafkaError as error:
            log.warning("lag of %s unknown: %s", self.topic, error)
            return
        # Tansu reports the end of a partition as the base offset of its last record batch + 1,
        # so after a batch the position can be past the "end": lag is a lower bound there.
        lag = {tp.partition: max(ends[tp] - positions[tp], 0) for tp in assigned}
        self.assigned = [tp.partition for tp in assigned]
        self.lag = lag
        metrics.CONSUMER_LAG.labels(self.topic).set(sum(lag.values()))

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """In the main thread, SIGTERM/SIGINT finish the message in hand, commit, and return;
        if that takes longer than ``common.stop_grace_s``, the process exits without committing
        (a batch of generation can take many minutes on a CPU, and compose kills after 10 s)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        grace = threading.Timer(self.common.stop_grace_s, self._give_back)
        grace.daemon = True

        def on_signal(signum: int, _frame: object) -> None:
            self.stop()
            if not grace.is_alive():
                grace.start()

        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            yield
        finally:
            grace.cancel()  # stopped in time
            for sig, handler in previous.items():
                signal.signal(sig, handler)
