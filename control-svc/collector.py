"""Gauges measured from outside the consumers, for dashboards and alerts.

A consumer reports its own lag, so that figure freezes exactly when the consumer is down or
stuck in a long batch. These are read from the broker (end offsets against each group's committed
offsets) and from the database (each running run's progress), by control-svc on every reconciler
pass, whatever state the other services are in.
"""

from __future__ import annotations

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from prometheus_client import Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.core.bus import topic_name
from shared.core.db import Run
from shared.core.messages import ALL_TOPICS, consumer_groups
from shared.core.runs import run_progress
from shared.core.settings import CommonSettings

TOPIC_MESSAGES = Gauge(
    "dualphase_topic_messages",
    "Messages written to a topic (sum of its partitions' end offsets), dead-letter topics "
    "included: a .dlq topic's value is what sits in it.",
    ["topic"],
)
GROUP_LAG = Gauge(
    "dualphase_group_lag",
    "Messages of a topic not yet committed by a consumer group, measured at the broker.",
    ["topic", "group"],
)
RUN_DONE = Gauge("dualphase_run_done", "Items of a running run's stage done.", ["run", "stage"])
RUN_TOTAL = Gauge("dualphase_run_total", "Items of a running run's stage.", ["run", "stage"])


def collect(common: CommonSettings, sessions: sessionmaker[Session]) -> None:
    """Set every gauge above once (a broker or database error propagates: next pass)."""
    collect_topics(common)
    with sessions() as session:
        running = session.scalars(select(Run.id).where(Run.status == "running")).all()
    progress = {run_id: run_progress(sessions, run_id) for run_id in running}
    # Finished runs drop out, so a run that completed never looks stalled.
    RUN_DONE.clear()
    RUN_TOTAL.clear()
    for run_id, stages in progress.items():
        for stage, (done, total) in stages.items():
            RUN_DONE.labels(run_id, stage).set(done)
            RUN_TOTAL.labels(run_id, stage).set(total)


def collect_topics(common: CommonSettings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=common.kafka_bootstrap)
    probe = KafkaConsumer(bootstrap_servers=common.kafka_bootstrap, enable_auto_commit=False)
    try:
        for base in ALL_TOPICS:  # the reconciler's ensure_topics made each and its .dlq
            topic = topic_name(common, base)
            ends = _ends(probe, topic)
            TOPIC_MESSAGES.labels(topic).set(sum(ends.values()))
            TOPIC_MESSAGES.labels(topic + ".dlq").set(sum(_ends(probe, topic + ".dlq").values()))
            for group in consumer_groups(base):
                group_id = common.topic_prefix + group
                committed = admin.list_group_offsets(group_id).get(group_id, {})
                lag = sum(
                    max(end - (committed[tp].offset if tp in committed else 0), 0)
                    for tp, end in ends.items()
                )
                GROUP_LAG.labels(topic, group).set(lag)
    finally:
        probe.close()
        admin.close()


def _ends(probe: KafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    partitions = probe.partitions_for_topic(topic) or set()
    return probe.end_offsets([TopicPartition(topic, p) for p in partitions])
