"""Pipeline overhead of generator-svc, and the long-CoT length ratio.

Side by side in one run, on the same synthetic problems and settings:
- direct: the phase-1 dialogue (``run_dialogues``) on the batched backend, in this process;
- service: the same jobs published on ``problems`` to a real generator-svc process (embedded
  broker, SQLite), timed until every dialogue is on ``dialogues``.
Both are warmed up first (one job), so model loading is not counted. Tokens per second of each,
and the overhead ``1 - service / direct``. The length ratio is final-turn tokens / turn-1 tokens
over the service's dialogues.

    python benchmarks/generator.py --problems 50 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kafka import KafkaConsumer  # noqa: E402

from dualphase.broker import EmbeddedBroker, free_port  # noqa: E402
from dualphase.embedded import service_env, start_service, stop_service, wait_ready  # noqa: E402
from generator_svc.handler import run_dialogues  # noqa: E402
from shared.core.bus import Publisher, ensure_topics, topic_name  # noqa: E402
from shared.core.messages import ALL_TOPICS, DIALOGUES, Dialogue, ProblemJob  # noqa: E402
from shared.core.migrations import upgrade  # noqa: E402
from shared.core.settings import Settings  # noqa: E402
from shared.datasets.synthetic import make_problems  # noqa: E402
from shared.inference import load_backend  # noqa: E402
from shared.method.markers import InferencePrompt
from shared.method.prompts import load_prompts  # noqa: E402


def jobs(count: int, tag: str) -> list[ProblemJob]:
    return [
        ProblemJob(
            run_id=f"bench-{tag}",
            kind="dialogue",
            problem_id=p.id,
            job_id=f"bench-{tag}:{p.id}:p1",
            phase=1,
            question=p.question,
            gold=str(p.answer),
            dataset="synthetic",
            seed=5,
        )
        for p in make_problems(count, seed=11)
    ]


def direct(settings: Settings, work: list[ProblemJob], warm: list[ProblemJob]) -> tuple[int, float]:
    backend = load_backend(settings.inference)
    prompts = load_prompts(settings.generator.prompt_version)
    run_dialogues(backend, prompts, warm, InferencePrompt(prompts.system), settings.generator)
    start = time.perf_counter()
    tokens = 0
    size = settings.inference.batch_size
    for i in range(0, len(work), size):  # the batches the service's consumer would take
        batch = work[i : i + size]
        gens = run_dialogues(
            backend, prompts, batch, InferencePrompt(prompts.system), settings.generator
        )
        tokens += sum(sum(g.tokens) for gs in gens for g in gs)
    return tokens, time.perf_counter() - start


def collect(consumer: KafkaConsumer, run_id: str, count: int) -> list[Dialogue]:
    found: dict[str, Dialogue] = {}
    while len(found) < count:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                d = Dialogue.model_validate_json(record.value)
                if d.run_id == run_id:
                    found[d.job_id] = d
    return list(found.values())


def service(
    settings: Settings, work: list[ProblemJob], warm: list[ProblemJob], tmp: Path
) -> tuple[int, float, list[Dialogue]]:
    with EmbeddedBroker() as broker:
        settings.common.kafka_bootstrap = broker.bootstrap
        settings.common.data_dir = tmp
        settings.generator.port = free_port()
        upgrade(settings.common.resolved_database_url())
        ensure_topics(settings.common, ALL_TOPICS)
        env = service_env(settings, broker.bootstrap)
        for section, field in (
            ("generator", "port"),
            ("generator", "max_new_tokens"),
            ("generator", "temperature"),
            ("inference", "batch_size"),
            ("inference", "dtype"),
            ("inference", "threads"),
        ):
            env[f"DUALPHASE_{section.upper()}__{field.upper()}"] = str(
                getattr(getattr(settings, section), field)
            )
        proc = start_service("generator", env, tmp / "logs")
        consumer = KafkaConsumer(
            topic_name(settings.common, DIALOGUES),
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
        )
        try:
            wait_ready(settings, ["generator"], {"generator": proc})
            publisher = Publisher(settings.common)
            publisher.publish_many("problems", warm)
            collect(consumer, warm[0].run_id, len(warm))
            start = time.perf_counter()
            publisher.publish_many("problems", work)
            dialogues = collect(consumer, work[0].run_id, len(work))
            seconds = time.perf_counter() - start
        finally:
            consumer.close()
            stop_service(proc)
    tokens = sum(sum(s.tokens) for d in dialogues for s in d.samples)
    return tokens, seconds, dialogues


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    settings = Settings()
    settings.inference.batch_size = args.batch_size
    settings.inference.dtype = args.dtype
    settings.inference.threads = args.threads
    settings.generator.temperature = 0.7
    settings.generator.max_new_tokens = args.max_new_tokens
    work, warm = jobs(args.problems, "work"), jobs(1, "warm")
    d_tokens, d_seconds = direct(settings, work, warm)
    with tempfile.TemporaryDirectory() as tmp:
        s_tokens, s_seconds, dialogues = service(settings, work, warm, Path(tmp))
    direct_rate, service_rate = d_tokens / d_seconds, s_tokens / s_seconds
    ratios = [s.tokens[-1] / max(s.tokens[0], 1) for d in dialogues for s in d.samples]
    print(f"direct:  {d_tokens} tokens in {d_seconds:.1f} s = {direct_rate:.1f} tokens/s")
    print(f"service: {s_tokens} tokens in {s_seconds:.1f} s = {service_rate:.1f} tokens/s")
    print(f"overhead: {100 * (1 - service_rate / direct_rate):.1f}%")
    mean, median = statistics.mean(ratios), statistics.median(ratios)
    print(
        f"long-CoT length ratio (final / turn-1 tokens), {len(ratios)} dialogues: "
        f"mean {mean:.2f}, median {median:.2f}"
    )


if __name__ == "__main__":
    main()
