"""The Kafka bus: topics (prefixed names, creation; the names themselves are in
``shared/core/messages.py``), the error kinds and a publisher; the consumer loop is
``shared/core/consumer.py`` (at-least-once, with a DLQ).

    publisher = Publisher(common)
    publisher.publish(PROBLEMS, job)  # waits for the broker's acknowledgement
"""

from __future__ import annotations

from collections import defaultdict

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from shared.core import metrics
from shared.core.messages import PROBLEMS, TOPIC_OF, Message
from shared.core.settings import CommonSettings

SEND_TIMEOUT_S = 30.0


class RetryableError(Exception):
    """Transient (database down, broker down): back off and retry the same message."""


class PermanentError(Exception):
    """Retrying will not fix it: the message goes to <topic>.dlq and the consumer goes on."""


# Everything else a handler raises is treated as permanent: a bug does not fix itself either.
RETRYABLE = (RetryableError, OperationalError, InterfaceError, DisconnectionError, KafkaError)


def topic_name(common: CommonSettings, base: str) -> str:
    return common.topic_prefix + base


def ensure_topics(common: CommonSettings, bases: list[str]) -> None:
    """Create each topic and its `<topic>.dlq` with `common.partitions` partitions (idempotent)."""
    admin = KafkaAdminClient(bootstrap_servers=common.kafka_bootstrap, client_id="dualphase-admin")
    try:
        existing = set(admin.list_topics())
        for base in bases:
            for name in (topic_name(common, base), topic_name(common, base) + ".dlq"):
                if name in existing:
                    continue
                try:
                    topic = NewTopic(
                        name,
                        common.partitions,
                        1,
                        topic_configs={"max.message.bytes": str(common.max_message_bytes)},
                    )
                    admin.create_topics([topic])
                except TopicAlreadyExistsError:
                    pass  # another service created it since list_topics
    finally:
        admin.close()


class Publisher:
    """Publishes messages and waits for the broker's acknowledgement (acks=all)."""

    def __init__(self, common: CommonSettings) -> None:
        self.common = common
        self._producer = KafkaProducer(
            bootstrap_servers=common.kafka_bootstrap,
            client_id="dualphase-publisher",
            acks="all",
            retries=5,
            max_block_ms=10_000,  # broker down: fail (and let the caller retry) instead of hanging
            # An idempotent producer holds a producer id that a restarted in-memory broker has
            # forgotten, and kafka-python then fails every send for good (measured on Tansu).
            # Duplicates are harmless here: every write is keyed.
            enable_idempotence=False,
            # Model outputs compress well; the limit is for the rare round that still exceeds
            # Kafka's 1 MB default (the broker and topics are raised to match).
            compression_type="gzip",
            max_request_size=common.max_message_bytes,
        )

    def publish(self, base_topic: str, message: Message) -> None:
        self.send(topic_name(self.common, base_topic), message.key(), message.to_bytes())

    def publish_many(self, base_topic: str, messages: list[Message]) -> None:
        """Publish several messages, waiting once for all acks (much faster than one by one)."""
        topic = topic_name(self.common, base_topic)
        futures = [
            self._producer.send(topic, key=m.key().encode(), value=m.to_bytes()) for m in messages
        ]
        for future in futures:
            future.get(timeout=SEND_TIMEOUT_S)
        metrics.MESSAGES_OUT.labels(topic).inc(len(futures))

    def publish_all(self, messages: list[Message]) -> None:
        """Publish each message on its topic (``messages.TOPIC_OF``), one wait per topic."""
        by_topic: dict[str, list[Message]] = defaultdict(list)
        for message in messages:
            by_topic[TOPIC_OF[type(message)]].append(message)
        for topic, batch in by_topic.items():
            self.publish_many(topic, batch)

    def send(self, topic: str, key: str | None, value: bytes) -> None:
        """Send raw bytes to a full topic name (prefix included) and wait for the ack."""
        encoded_key = key.encode() if key is not None else None
        self._producer.send(topic, key=encoded_key, value=value).get(timeout=SEND_TIMEOUT_S)
        metrics.MESSAGES_OUT.labels(topic).inc()

    def connected(self) -> bool:
        """Whether the broker answers a metadata request (for /readyz)."""
        try:
            return bool(self._producer.partitions_for(topic_name(self.common, PROBLEMS)))
        except KafkaError:
            return False

    def close(self) -> None:
        self._producer.close()
