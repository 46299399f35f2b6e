"""Prometheus metrics of the bus (the default registry): every service's consumers and
publisher update them, and each service serves them on `/metrics` beside its own metrics, which
live in the service's modules. The `topic` label is the full topic name, prefix included, as the
broker knows it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_IN = Counter(
    "dualphase_messages_in", "Messages consumed and finished (handled or dead-lettered).", ["topic"]
)
MESSAGES_OUT = Counter("dualphase_messages_out", "Messages published (acknowledged).", ["topic"])
ERRORS = Counter(
    "dualphase_errors",
    "Errors while consuming; kind is retryable (backed off and retried), permanent or parse "
    "(both dead-lettered).",
    ["topic", "kind"],
)
DLQ = Counter("dualphase_dlq", "Messages sent to the topic's dead-letter queue.", ["topic"])
PROCESSING_SECONDS = Histogram(
    "dualphase_processing_seconds",
    "Time a handler took for one message (successful attempts).",
    ["topic"],
    # Up to 8 h: a training job of the paper's size is one message and takes hours.
    buckets=(
        0.001,
        0.005,
        0.01,
        0.05,
        0.1,
        0.5,
        1,
        5,
        10,
        30,
        60,
        300,
        1800,
        3600,
        7200,
        14400,
        28800,
    ),
)
TOKENS_GENERATED = Counter(
    "dualphase_generated_tokens",
    "Completion tokens generated: samples and dialogues in generator-svc, answers in eval-svc.",
)
CONSUMER_LAG = Gauge(
    "dualphase_consumer_lag", "Messages not yet consumed on the partitions held here.", ["topic"]
)
