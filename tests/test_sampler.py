"""sampler-svc: the 1:1 phase-1 set, the escalating phase-2 rounds, markers, decontamination,
shards, what the control plane re-sends when a publish is lost, and a sampler killed with SIGKILL
mid-round over the real broker and PostgreSQL.

Run as a script (``python tests/test_sampler.py worker ...``) this file is the sampler consumer
process that the kill test starts and kills.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_svc.reconciler import Reconciler, consumed, owed
from dualphase import run_story
from sampler_svc import handler as sampler
from sampler_svc.balance import balanced_counts, build_phase1_set
from sampler_svc.decontam import Decontaminator
from sampler_svc.sealing import contaminated
from shared.core import shards
from shared.core.bus import Publisher, ensure_topics, topic_name
from shared.core.consumer import Consumer
from shared.core.db import (
    AttemptCount,
    CheckpointRow,
    EvalResult,
    GenerationRow,
    Problem,
    RuleCount,
    Run,
    VerdictRow,
    insert_ignore,
    insert_verdicts,
    make_engine,
    make_sessionmaker,
)
from shared.core.messages import (
    ALL_TOPICS,
    PROBLEMS,
    TRAINING_SHARDS,
    VERIFIED_SAMPLES,
    CheckpointReady,
    Dialogue,
    Generation,
    Message,
    ProblemJob,
    SamplingParams,
    ShardManifest,
    Verdict,
    VerifiedSamples,
)
from shared.core.settings import (
    CommonSettings,
    DataSettings,
    EvalSettings,
    SamplerSettings,
    Settings,
)
from shared.datasets import SYNTHETIC_SIZE, DatasetUnavailable, load_benchmark, load_benchmarks
from shared.datasets.rows import last_boxed
from shared.method.grading import Grader
from shared.method.markers import render

HERE = Path(__file__).resolve()
DATASETS = HERE.parents[2] / "shared" / "datasets"  # the harness files, read as a test's data
BENCHMARKS = DATASETS / "benchmarks"
TRAIN = DATASETS / "train" / "math_test_full.jsonl"
CHECKS = "Let me verify each step. I check the arithmetic again and confirm it is right."


@pytest.fixture(autouse=True, scope="module")
def local_datasets(data_settings: DataSettings) -> Iterator[None]:
    """Every Settings of this module (and of the workers it starts) reads the benchmarks that
    decontamination checks from the local copies (data.local_dir), as a service would."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DUALPHASE_DATA__LOCAL_DIR", str(data_settings.local_dir))
        env.setenv("DUALPHASE_DATA__CACHE_DIR", str(data_settings.cache_dir))
        yield


def make_settings(data_dir: Path, **sampler_fields: object) -> Settings:
    return Settings(
        common=CommonSettings(data_dir=data_dir),
        sampler=SamplerSettings(**sampler_fields),
    )


def add_run(
    sessions: sessionmaker[Session],
    phase1: list[tuple[str, str, str]] = (),
    phase2: list[tuple[str, str, str]] = (),
    seed: int = 7,
) -> str:
    """A run with (id, question, gold) problems per phase."""
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    with sessions.begin() as session:
        session.add(Run(id=run_id, config={}, seed=seed))
        session.flush()
        rows = [
            dict(run_id=run_id, problem_id=p, phase=phase, question=q, gold=g)
            for phase, problems in ((1, phase1), (2, phase2))
            for p, q, g in problems
        ]
        insert_ignore(session, Problem, rows)
    return run_id


def add_generations(session: Session, job: ProblemJob, texts: list[list[str]]) -> list[str]:
    """What the generator writes: one row per sample, sample id = job id + index."""
    ids = [f"{job.job_id}:{i}" for i in range(len(texts))]
    rows = [
        dict(
            run_id=job.run_id,
            problem_id=job.problem_id,
            sample_id=sid,
            job_id=job.job_id,
            phase=job.phase,
            round=job.round,
            turns=turns,
            tokens=[len(t) for t in turns],
            model=job.model or "m0",
            prompt_version="v1",
            params=SamplingParams(n=job.n, seed=job.seed).model_dump(),
            seed=job.seed + i,
        )
        for i, (sid, turns) in enumerate(zip(ids, texts, strict=True))
    ]
    insert_ignore(session, GenerationRow, rows)
    return ids


def phase1_job(run_id: str, problem_id: str) -> ProblemJob:
    return ProblemJob(
        run_id=run_id,
        kind="dialogue",
        problem_id=problem_id,
        job_id=f"{run_id}:{problem_id}:p1",
        phase=1,
        question="",
        gold="",
    )


def phase1_verdicts(run_id: str, problem_id: str, category: str, rules: list[str] = ()):
    """A verifier message for a one-sample phase-1 job of the given category."""
    final = category[1] == "R"
    verdict = Verdict(
        sample_id=f"{run_id}:{problem_id}:p1:0",
        initial_correct=category[0] == "R",
        final_correct=final,
        category=category,
        accepted=final and not rules,
        failed_rules=list(rules),
    )
    return VerifiedSamples(
        run_id=run_id,
        problem_id=problem_id,
        job_id=f"{run_id}:{problem_id}:p1",
        phase=1,
        verdicts=[verdict],
    )


def checkpoint(run_id: str) -> CheckpointReady:
    return CheckpointReady(
        run_id=run_id, checkpoint_id=f"{run_id}-m1", stage="M1", path=f"/ckpt/{run_id}/m1"
    )


def answer_job(session: Session, job: ProblemJob, correct: list[bool], texts: list[str]):
    """Stand-in for generator + verifier: store the samples, return the verifier's message."""
    ids = add_generations(session, job, [[t] for t in texts])
    verdicts = [
        Verdict(sample_id=sid, final_correct=ok, category="R" if ok else "W", accepted=ok)
        for sid, ok in zip(ids, correct, strict=True)
    ]
    return VerifiedSamples(
        run_id=job.run_id,
        problem_id=job.problem_id,
        job_id=job.job_id,
        phase=2,
        round=job.round,
        verdicts=verdicts,
    )


def read_rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# --- phase 1 ----------------------------------------------------------------------------------


def reconcile(sessions: sessionmaker[Session], settings: Settings) -> list[Message]:
    """What the control plane's pass owes every run of the database."""
    with sessions() as session:
        runs = session.scalars(select(Run.id).order_by(Run.id)).all()
    return [m for run_id in runs for m in owed(sessions, run_id, settings)]


@pytest.fixture(scope="module")
def clean_math_problems(data_settings: DataSettings) -> list[tuple[str, str, str]]:
    """40 real MATH problems (id, question, gold) that share no 13-gram with a benchmark."""
    check = Decontaminator.from_benchmarks(load_benchmarks(EvalSettings(), data_settings), 13)
    out = []
    with TRAIN.open() as f:
        for line in f:
            row = json.loads(line)
            if not check.match(row["problem"]) and len(out) < 40:
                out.append((f"math-{row['idx']}", row["problem"], last_boxed(row["solution"])))
    return out


def test_phase1_set_is_exactly_one_to_one_on_real_verdicts(
    db_url: str, tmp_path: Path, clean_math_problems: list[tuple[str, str, str]]
) -> None:
    from verifier_svc.handler import verify_dialogue

    sessions = make_sessionmaker(make_engine(db_url))
    settings = make_settings(tmp_path)
    run_id = add_run(sessions, phase1=clean_math_problems)
    # Turn 1 and the long CoT are right or wrong by design (3 RR : 1 WR : 1 RW or WW); the real
    # grader (math-verify) and the real rule filters decide.
    plan = ["RR", "RR", "RR", "WR", "RW", "RR", "RR", "RR", "WR", "WW"]
    messages = []
    with Grader(timeout_s=10) as grader, sessions.begin() as session:
        for i, (pid, _, gold) in enumerate(clean_math_problems):
            first, final = (
                f"\\boxed{{{gold}}}" if c == "R" else "\\boxed{-98765}" for c in plan[i % 10]
            )
            checks = "" if i == 0 else CHECKS  # problem 0 fails has_checking_steps
            turns = [
                f"First attempt. The answer is {first}.",
                "Review.",
                f"Solving step by step. {checks} So the final answer is {final}.",
            ]
            job = phase1_job(run_id, pid)
            add_generations(session, job, [turns])
            dialogue = Dialogue(
                run_id=run_id,
                problem_id=pid,
                job_id=job.job_id,
                phase=1,
                gold=gold,
                model="m0",
                prompt_version="v1",
                params=SamplingParams(),
                samples=[
                    Generation(sample_id=f"{job.job_id}:0", turns=turns, tokens=[30] * 3, seed=0)
                ],
            )
            messages.append(verify_dialogue(dialogue, grader, settings.verifier))
    categories = Counter(m.verdicts[0].category for m in messages)
    assert categories == {"RR": 24, "WR": 8, "RW": 4, "WW": 4}  # math-verify agreed with the plan

    out: list = []
    for msg in messages:
        assert out == []  # nothing before the last phase-1 problem has its verdict
        with sessions.begin() as session:
            out = sampler.on_verdicts(session, msg, settings)
    (manifest,) = out
    assert isinstance(manifest, ShardManifest) and manifest.stage == "phase1"
    rows = read_rows(manifest.files[0].path)
    with sessions() as session:
        verdicts = {
            v.sample_id: v
            for v in session.scalars(select(VerdictRow).where(VerdictRow.run_id == run_id))
        }
        counts = {
            r.rule: (r.failed, r.passed)
            for r in session.scalars(select(RuleCount).where(RuleCount.run_id == run_id))
        }
        again = build_phase1_set(session, run_id, seed=7)
        other = build_phase1_set(session, run_id, seed=8)
    kept = [verdicts[r["sample_id"]] for r in rows]
    # 23 accepted RR (one failed a rule) against 8 WR: 8 of each.
    assert sum(v.initial_correct for v in kept) == sum(not v.initial_correct for v in kept) == 8
    assert all(v.accepted and v.final_correct for v in kept)
    assert [v.sample_id for v in again.kept] == [r["sample_id"] for r in rows]  # same seed
    assert {v.sample_id for v in other.kept} != {v.sample_id for v in again.kept}
    assert counts["phase1:category:RR"] == (16, 8) and counts["phase1:category:WR"] == (0, 8)
    assert counts["phase1:category:RW"] == (4, 0) and counts["phase1:category:WW"] == (4, 0)
    assert counts["phase1:rule:has_checking_steps"] == (1, 39)
    assert counts["phase1:balance"] == (15, 16)
    assert manifest.files[0].rows == 16 and all(r["source"] == "multi-turn" for r in rows)
    first, review, rewrite = rows[0]["completion"][0]["content"].split("\n\n")  # the chain
    assert first.startswith("First attempt") and review == "Review."
    assert rewrite.startswith("Solving step by step")

    with sessions.begin() as session:  # a redelivered verdict: announced once, file untouched
        assert sampler.on_verdicts(session, messages[3], settings) == []
    assert manifest in reconcile(sessions, settings)  # a lost publish is announced again
    shards.verify(manifest.files[0])


def test_a_phase1_set_whose_last_verdicts_were_lost_is_sealed_on_the_message_sent_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    # The verifier wrote every verdict, but the broker lost its last message to the sampler: the
    # control plane re-sends that message, rebuilt from the verdict rows, and the sampler seals.
    sessions = make_sessionmaker(make_engine(sqlite_url))
    settings = make_settings(tmp_path)
    run_id = add_run(sessions, phase1=[("p0", "Question p0?", "1"), ("p1", "Question p1?", "1")])
    messages = [phase1_verdicts(run_id, "p0", "RR"), phase1_verdicts(run_id, "p1", "WR")]
    with sessions.begin() as session:
        for msg in messages:
            add_generations(session, phase1_job(run_id, msg.problem_id), [["1", "R.", "1"]])
        assert sampler.on_verdicts(session, messages[0], settings) == []  # p1 not judged yet
        insert_verdicts(session, messages[1])  # the verifier's write; its message never arrives
    with sessions.begin() as session:
        assert not shards.registered(session, run_id, "phase1")
    resent = [m for m in reconcile(sessions, settings) if m.run_id == run_id]
    assert resent == [messages[1]]
    with sessions.begin() as session:
        (manifest,) = sampler.on_verdicts(session, resent[0], settings)
    assert manifest.stage == "phase1" and manifest.files[0].rows == 2


@pytest.mark.parametrize("row", ["chain", "rewrite"])
def test_a_phase1_row_holds_the_first_answer_the_check_and_the_correction(
    sqlite_url: str, tmp_path: Path, row: str
) -> None:
    sessions = make_sessionmaker(make_engine(sqlite_url))
    settings = make_settings(tmp_path, phase1_row=row)
    run_id = add_run(sessions, phase1=[("p0", "What is 2 + 3?", "5"), ("p1", "1 + 1?", "2")])
    turns = [
        "2 + 3 = 6. The answer is 6.",
        "Let me verify: 2 + 3 is 5, not 6. I made a mistake in the sum.",
        "First I wrote 2 + 3 = 6, then I checked it: the sum is 5. The answer is \\boxed{5}.",
    ]
    with sessions.begin() as session:  # p1, right first time, balances p0 (1:1)
        add_generations(session, phase1_job(run_id, "p0"), [turns])
        add_generations(session, phase1_job(run_id, "p1"), [["2", "Review.", "\\boxed{2}"]])
        sampler.on_verdicts(session, phase1_verdicts(run_id, "p1", "RR"), settings)
        (manifest,) = sampler.on_verdicts(session, phase1_verdicts(run_id, "p0", "WR"), settings)
    (shard_row,) = [r for r in read_rows(manifest.files[0].path) if r["problem_id"] == "p0"]
    completion = shard_row["completion"]
    assert len(completion) == 1  # one assistant turn
    text = completion[0]["content"]
    if row == "chain":  # the first answer, its review and correction, the rewrite as summary
        assert text == "\n\n".join(turns)
    else:
        assert text == turns[-1]
    with sessions() as session:  # the report gives both lengths (add_generations: characters)
        section = run_story.phase1_rows(session, run_id)
    both = [turns, ["2", "Review.", "\\boxed{2}"]]
    chain = sum(len(t) for ts in both for t in ts) / 2
    rewrite = sum(len(ts[-1]) for ts in both) / 2
    assert [r[1] for r in section.rows] == [f"{chain:.0f}", f"{rewrite:.0f}"]
    Path(manifest.files[0].path).unlink()  # the shard folder deleted since: no rows, no error
    with sessions() as session:
        assert run_story.phase1_rows(session, run_id).rows == []


def test_phase1_manifest_is_announced_once_when_the_verifier_wrote_every_verdict_first(
    db_url: str, tmp_path: Path
) -> None:
    # verifier-svc writes verdict rows before the sampler reads its messages: with a backlog,
    # every message the sampler reads finds all phase-1 verdicts present.
    sessions = make_sessionmaker(make_engine(db_url))
    settings = make_settings(tmp_path)
    pids = [f"p{i}" for i in range(4)]
    run_id = add_run(sessions, phase1=[(p, f"Question {p}?", "1") for p in pids])
    messages = [phase1_verdicts(run_id, p, "WR" if i % 2 else "RR") for i, p in enumerate(pids)]
    with sessions.begin() as session:
        for pid, msg in zip(pids, messages, strict=True):
            add_generations(session, phase1_job(run_id, pid), [["1", "Review.", f"{CHECKS} 1"]])
            insert_verdicts(session, msg)
    published = []
    for msg in messages:
        with sessions.begin() as session:
            published += sampler.on_verdicts(session, msg, settings)
    (manifest,) = published
    assert isinstance(manifest, ShardManifest) and manifest.files[0].rows == 4


@pytest.mark.parametrize(("status", "announced"), [("training", True), ("ready", False)])
def test_a_manifest_whose_checkpoint_was_left_training_is_announced_again(
    sqlite_url: str, tmp_path: Path, status: str, announced: bool
) -> None:
    # A trainer that crashed leaves its checkpoint row at "training"; if the broker also lost the
    # manifest, only the reconciler can announce it again.
    sessions = make_sessionmaker(make_engine(sqlite_url))
    settings = make_settings(tmp_path)
    run_id = add_run(sessions, phase1=[("p0", "Question p0?", "1")])
    with sessions.begin() as session:
        add_generations(session, phase1_job(run_id, "p0"), [["1", "Review.", f"{CHECKS} 1"]])
        (manifest,) = sampler.on_verdicts(session, phase1_verdicts(run_id, "p0", "RR"), settings)
        session.add(
            CheckpointRow(
                id=f"{run_id}-m1",
                run_id=run_id,
                stage="M1",
                path="",
                shard_id=manifest.shard_id,
                status=status,
            )
        )
    assert (manifest in reconcile(sessions, settings)) is announced


def test_a_one_phase_run_never_gets_its_m1_announced_again_for_phase_2(
    common: CommonSettings, sqlite_url: str
) -> None:
    # sampler.phases: 1 stops after M1: the reconciler must not take "phase 2 not started" for a
    # lost announcement and publish M1 again every interval.
    sessions = make_sessionmaker(make_engine(sqlite_url))
    settings = Settings(
        common=common,
        eval=EvalSettings(benchmarks=["gsm8k"]),
        sampler=SamplerSettings(phases=1),
    )
    run_id = add_run(
        sessions, phase1=[("a", "Question a?", "1")], phase2=[("b", "Question b?", "1")]
    )
    with sessions.begin() as session:
        session.get_one(Run, run_id).config = settings.model_dump(mode="json")
        session.add(
            CheckpointRow(id=f"{run_id}-m1", run_id=run_id, stage="M1", path="/m1", status="ready")
        )
        session.add(
            EvalResult(
                run_id=run_id,
                checkpoint_id=f"{run_id}-m1",
                benchmark="gsm8k",
                problems=1,
                samples=1,
                accuracy=0.0,
                mean_tokens=1.0,
            )
        )
    published = Reconciler(settings, sessions, Publisher(common)).reconcile(force=True)
    assert "CheckpointReady" not in published


def test_m1_lost_to_a_run_without_phase2_problems_is_announced_until_the_shard_is_sealed(
    sqlite_url: str, tmp_path: Path
) -> None:
    # No phase-2 problem: M1's announcement makes the sampler seal the joint shard at once. If
    # the announcement was lost, only the control plane can send it again.
    sessions = make_sessionmaker(make_engine(sqlite_url))
    settings = make_settings(tmp_path)
    settings.eval.benchmarks = ["synthetic"]
    run_id = add_run(sessions, phase1=[("a", "Question a?", "1")])
    with sessions.begin() as session:
        add_generations(session, phase1_job(run_id, "a"), [["1", "Review.", f"{CHECKS} 1"]])
        sampler.on_verdicts(session, phase1_verdicts(run_id, "a", "RR"), settings)
        session.add(
            CheckpointRow(id=f"{run_id}-m1", run_id=run_id, stage="M1", path="/m1", status="ready")
        )
        session.add(  # evaluated: only its announcement to the sampler is missing
            EvalResult(
                run_id=run_id,
                checkpoint_id=f"{run_id}-m1",
                benchmark="synthetic",
                problems=1,
                samples=1,
                accuracy=0.0,
                mean_tokens=1.0,
            )
        )

    def lost_m1() -> list[Message]:
        return [
            m
            for m in reconcile(sessions, settings)
            if isinstance(m, CheckpointReady) and m.run_id == run_id and m.stage == "M1"
        ]

    (again,) = lost_m1()
    with sessions.begin() as session:
        (manifest,) = sampler.on_checkpoint(session, again, settings)
    assert manifest.stage == "joint"
    assert lost_m1() == []


def test_a_stage_holding_the_second_message_of_a_batch_is_not_idle(common: CommonSettings) -> None:
    # The phase-1 and oracle manifests go out as one record batch; Tansu then reports the
    # partition's end as 1. A trainer that committed the first and trains on the second is busy.
    ensure_topics(common, [TRAINING_SHARDS])
    topic = topic_name(common, TRAINING_SHARDS)
    producer = KafkaProducer(bootstrap_servers=common.kafka_bootstrap, linger_ms=200)
    for stage in ("phase1", "oracle"):
        message = ShardManifest(
            run_id="run-x", shard_id=f"run-x:{stage}", stage=stage, base_model="m", files=[]
        )
        producer.send(topic, key=message.key().encode(), value=message.to_bytes())
    producer.flush()
    producer.close()
    (tp,) = {TopicPartition(topic, r.partition) for r in read_all(common, topic, 2)}
    trainer = KafkaConsumer(
        bootstrap_servers=common.kafka_bootstrap,
        group_id=common.topic_prefix + "trainer",
        enable_auto_commit=False,
    )
    trainer.assign([tp])
    trainer.commit({tp: OffsetAndMetadata(1, "", -1)})  # the oracle manifest is in hand
    assert not consumed(common, [TRAINING_SHARDS])
    trainer.commit({tp: OffsetAndMetadata(2, "", -1)})
    trainer.close()
    assert consumed(common, [TRAINING_SHARDS])


def read_all(common: CommonSettings, topic: str, count: int) -> list:
    """The first ``count`` records of a topic, without a consumer group."""
    reader = KafkaConsumer(bootstrap_servers=common.kafka_bootstrap, enable_auto_commit=False)
    reader.assign([TopicPartition(topic, p) for p in range(common.partitions)])
    reader.seek_to_beginning()
    records: list = []
    deadline = time.monotonic() + 30
    while len(records) < count and time.monotonic() < deadline:
        records += [r for rs in reader.poll(timeout_ms=500).values() for r in rs]
    reader.close()
    return records


def test_decontamination_drops_a_planted_benchmark_problem(
    db_url: str, tmp_path: Path, data_settings: DataSettings
) -> None:
    math500 = json.loads((BENCHMARKS / "math500" / "test.jsonl").read_text().splitlines()[17])
    # The copy differs in spacing and punctuation: n-grams of words still match.
    planted = ("planted", "  " + math500["problem"].replace(" ", "  ").replace(",", " ,"), "1")
    check = Decontaminator.from_benchmarks(load_benchmarks(EvalSettings(), data_settings), 13)
    assert check.match(planted[1]) is not None
    synthetic = [
        (f"s{i}", f"Ava has {i + 3} apples and gets {i} more. How many?", "1") for i in range(4)
    ]
    assert not any(check.match(q) for _, q, _ in synthetic)

    sessions = make_sessionmaker(make_engine(db_url))
    settings = make_settings(tmp_path)
    run_id = add_run(sessions, phase1=[*synthetic, planted])
    out: list = []
    with sessions.begin() as session:
        for pid, category in [
            ("s0", "RR"),
            ("s1", "WR"),
            ("s2", "RR"),
            ("s3", "WR"),
            ("planted", "WR"),
        ]:
            add_generations(session, phase1_job(run_id, pid), [["t1", "t2", f"long CoT {pid}"]])
            out = sampler.on_verdicts(session, phase1_verdicts(run_id, pid, category), settings)
    rows = read_rows(out[0].files[0].path)
    assert sorted(r["problem_id"] for r in rows) == ["s0", "s1", "s2", "s3"]
    with sessions() as session:
        dropped = session.scalars(
            select(RuleCount).where(RuleCount.run_id == run_id, RuleCount.rule == "phase1:decontam")
        ).one()
    assert (dropped.failed, dropped.passed) == (1, 4)


def test_decontamination_covers_the_held_out_synthetic_problems_beyond_the_evaluated_ones(
    sqlite_url: str, tmp_path: Path
) -> None:
    held_out = load_benchmark("synthetic", limit=SYNTHETIC_SIZE)[150]  # not among the 10 run
    own = "Ava has 3 apples and gets 2 more. How many?"
    settings = Settings(
        common=CommonSettings(data_dir=tmp_path),
        eval=EvalSettings(benchmarks=["synthetic"], limit=10),
    )
    sessions = make_sessionmaker(make_engine(sqlite_url))
    run_id = add_run(sessions, phase1=[("copy", held_out.question, "1"), ("own", own, "5")])
    with sessions() as session:
        assert contaminated(session, run_id, settings) == {"copy"}


def test_decontamination_that_cannot_load_a_benchmark_names_its_id_and_the_setting(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        common=CommonSettings(data_dir=tmp_path),
        eval=EvalSettings(benchmarks=["synthetic", "gsm8k"]),
        data=DataSettings(local_dir=tmp_path / "copies", cache_dir=tmp_path / "cache"),
    )
    sessions = make_sessionmaker(make_engine(sqlite_url))
    run_id = add_run(sessions, phase1=[("a", "Question a?", "1")])
    with sessions() as session, pytest.raises(DatasetUnavailable) as caught:
        contaminated(session, run_id, settings)
    assert "openai/gsm8k" in str(caught.value) and "data.local_dir" in str(caught.value)


# --- markers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["system", "prefix", "none"])
def test_markers_render_each_way(style: str) -> None:
    settings = SamplerSettings(marker_style=style, marker_rejection="<<RS>>")
    sample = render(
        "Reason step by step.", "What is 2+2?", "It is \\boxed{4}.", "rejection", settings
    )
    system, user = sample["prompt"]
    answer = sample["completion"][0]["content"]
    assert user == {"role": "user", "content": "What is 2+2?"}
    assert ("<<RS>>" in system["content"]) == (style == "system")
    assert answer.startswith("<<RS>>") == (style == "prefix")
    long_cot = render("S", "Q", "A", "multi-turn", settings)
    text = long_cot["prompt"][0]["content"] + long_cot["completion"][0]["content"]
    assert ("[multi-turn long CoT]" in text) == (style != "none")
    assert "<<RS>>" not in text


# --- phase 2 ----------------------------------------------------------------------------------

# Per problem: the round whose samples are right (None: never), and how many of them are right.
PLAN = {"easy": (0, 2), "late": (1, 1), "mid": (2, 3), "never": (None, 0)}


def texts_for(problem_id: str, round_: int, n: int) -> tuple[list[bool], list[str]]:
    target, right = PLAN[problem_id]
    correct = [round_ == target and i < right for i in range(n)]
    # "easy" gets the same solution twice up to case and spacing: de-duplicated to one.
    texts = [f"{problem_id} r{round_} s{i} \\boxed{{1}}" for i in range(n)]
    if problem_id == "easy":
        texts = ["Two  plus two is \\boxed{4}.", "two plus two IS \\boxed{4}."]
    return correct, texts


def test_rounds_escalate_through_the_schedule_and_redelivery_counts_nothing_twice(
    db_url: str, tmp_path: Path
) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    settings = make_settings(tmp_path, schedule=[2, 3, 5], keep_k=2, mode="sequential")
    run_id = add_run(sessions, phase2=[(p, f"Question {p}?", "1") for p in PLAN])
    with sessions.begin() as session:
        queue = sampler.on_checkpoint(session, checkpoint(run_id), settings)
    published: list = []
    while queue:
        job = queue.pop(0)
        published.append(job)
        assert isinstance(job, ProblemJob) and job.n == [2, 3, 5][job.round]
        again = reconcile(sessions, settings)  # the control plane finds exactly the jobs in flight
        assert {j.job_id for j in again if isinstance(j, ProblemJob) and j.run_id == run_id} == {
            j.job_id for j in [job, *queue]
        }
        with sessions.begin() as session:
            msg = answer_job(session, job, *texts_for(job.problem_id, job.round, job.n))
            out = sampler.on_verdicts(session, msg, settings)
        with sessions.begin() as session:
            assert sampler.on_verdicts(session, msg, settings) == []  # redelivered
        queue += [m for m in out if isinstance(m, ProblemJob)]
        published += [m for m in out if not isinstance(m, ProblemJob)]

    jobs = [m.job_id for m in published if isinstance(m, ProblemJob)]
    assert sorted(jobs) == sorted(
        f"{run_id}:{p}:r{r}"
        for p, rounds in {"easy": 1, "late": 2, "mid": 3, "never": 3}.items()
        for r in range(rounds)
    )
    seeds = {m.round: m.seed for m in published if isinstance(m, ProblemJob)}
    assert seeds == {0: 7, 1: 9, 2: 12}  # run seed + samples of the earlier rounds
    with sessions() as session:
        counts = {
            c.problem_id: (c.state, c.round, c.attempts, c.corrects)
            for c in session.scalars(select(AttemptCount).where(AttemptCount.run_id == run_id))
        }
    assert counts == {
        "easy": ("solved", 0, 2, 2),
        "late": ("solved", 1, 5, 1),
        "mid": ("solved", 2, 10, 3),
        "never": ("exhausted", 2, 10, 0),
    }
    (manifest,) = [m for m in published if isinstance(m, ShardManifest)]
    assert (manifest.stage, manifest.base_model) == ("phase2", f"/ckpt/{run_id}/m1")
    assert manifest.parent_checkpoint_id == f"{run_id}-m1"
    file = manifest.files[0]
    shards.verify(file)
    loaded = datasets.load_dataset("json", data_files=file.path, split="train")
    assert loaded.num_rows == file.rows == 4
    assert set(loaded["source"]) == {"rejection"}
    kept = Counter(sample_id.split(":")[1] for sample_id in loaded["sample_id"])
    # easy: two texts, one solution; mid: three correct, k = 2; never: exhausted
    assert kept == {"easy": 1, "late": 1, "mid": 2}
    assert loaded[0]["prompt"][1]["content"].startswith("Question")
    assert "[rejection sampled]" in loaded[0]["prompt"][0]["content"]
    with sessions() as session:
        registered = shards.registered(session, run_id, "phase2")
    assert registered == manifest.files


def test_joint_shard_merges_both_phases_with_prefix_markers(db_url: str, tmp_path: Path) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    settings = make_settings(tmp_path, schedule=[2], mode="joint", marker_style="prefix")
    run_id = add_run(
        sessions,
        phase1=[("a", "Question a?", "1"), ("b", "Question b?", "1")],
        phase2=[("easy", "Question easy?", "4")],
    )
    with sessions.begin() as session:
        for pid, category in [("a", "RR"), ("b", "WR")]:
            add_generations(session, phase1_job(run_id, pid), [["t1", "t2", f"long CoT {pid}"]])
            out = sampler.on_verdicts(session, phase1_verdicts(run_id, pid, category), settings)
        (phase1,) = out  # the manifest comes with the last phase-1 verdict
        (job,) = sampler.on_checkpoint(session, checkpoint(run_id), settings)
        out = sampler.on_verdicts(
            session, answer_job(session, job, *texts_for("easy", 0, 2)), settings
        )
    assert phase1.stage == "phase1" and phase1.base_model == "embedded"
    manifest = out[-1]
    assert (manifest.stage, manifest.base_model, manifest.parent_checkpoint_id) == (
        "joint",
        "embedded",
        "",
    )
    rows = read_rows(manifest.files[0].path)
    completions = {r["sample_id"].split(":")[1]: r["completion"][0]["content"] for r in rows}
    assert completions == {
        "a": "[multi-turn long CoT]\nt1\n\nt2\n\nlong CoT a",
        "b": "[multi-turn long CoT]\nt1\n\nt2\n\nlong CoT b",
        "easy": "[rejection sampled]\nTwo  plus two is \\boxed{4}.",
    }


# --- kill and restart over the real broker ----------------------------------------------------

SCHEDULE = [1, 2, 3]
KILL_PLAN = {"a": 0, "b": 1, "c": 2, "d": None}  # round with the first correct sample


def worker_settings(bootstrap: str, prefix: str, data_dir: str) -> Settings:
    return Settings(
        common=CommonSettings(
            kafka_bootstrap=bootstrap,
            topic_prefix=prefix,
            data_dir=Path(data_dir),
            partitions=2,
            session_timeout_ms=6000,
            retry_backoff_s=0.05,
        ),
        sampler=SamplerSettings(schedule=SCHEDULE, mode="sequential"),
    )


def worker_main(
    bootstrap: str, prefix: str, db_url: str, data_dir: str, log: str, delay_s: str
) -> None:
    """The sampler consumer, with a pause between its commit and its publish (the kill window)."""
    settings = worker_settings(bootstrap, prefix, data_dir)
    sessions = make_sessionmaker(make_engine(db_url))
    publisher = Publisher(settings.common)

    def note(line: str) -> None:
        with open(log, "a") as f:
            f.write(line + "\n")

    lost = reconcile(sessions, settings)  # control-svc's pass at start-up
    publisher.publish_all(lost)
    note(f"started {len(lost)}")

    def handle(msg: VerifiedSamples) -> None:
        with sessions.begin() as session:
            out = sampler.on_verdicts(session, msg, settings)
        note(f"committed {msg.job_id}")
        time.sleep(float(delay_s))
        publisher.publish_all(out)
        note(f"published {msg.job_id}")

    Consumer(settings.common, VERIFIED_SAMPLES, "sampler", VerifiedSamples, handle, publisher).run()


def start_worker(common: CommonSettings, db_url: str, log: Path, delay_s: float):
    args = [
        sys.executable,
        str(HERE),
        "worker",
        common.kafka_bootstrap,
        common.topic_prefix,
        db_url,
        str(common.data_dir),
        str(log),
        str(delay_s),
    ]
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=log.with_suffix(".err").open("a")
    )


def reader(common: CommonSettings, base: str) -> KafkaConsumer:
    """A group-less reader of every partition of a topic from the start."""
    consumer = KafkaConsumer(bootstrap_servers=common.kafka_bootstrap, enable_auto_commit=False)
    topic = topic_name(common, base)
    consumer.assign([TopicPartition(topic, p) for p in range(common.partitions)])
    consumer.seek_to_beginning()
    return consumer


def test_sampler_killed_mid_round_loses_and_repeats_no_round(
    broker: str, pg_url: str, common: CommonSettings
) -> None:
    ensure_topics(common, ALL_TOPICS)
    sessions = make_sessionmaker(make_engine(pg_url))
    settings = worker_settings(broker, common.topic_prefix, str(common.data_dir))
    run_id = add_run(sessions, phase2=[(p, f"Question {p}?", "1") for p in KILL_PLAN])
    publisher = Publisher(common)
    with sessions.begin() as session:
        publisher.publish_all(sampler.on_checkpoint(session, checkpoint(run_id), settings))

    log = common.data_dir / "worker.log"
    worker = start_worker(common, pg_url, log, delay_s=1.5)
    jobs_in = reader(common, PROBLEMS)
    answered: Counter[str] = Counter()
    killed_in_window = ""
    deadline = time.monotonic() + 120
    try:
        while True:
            assert time.monotonic() < deadline, f"timed out; log:\n{log.read_text()}"
            for records in jobs_in.poll(timeout_ms=300).values():
                for record in records:
                    job = ProblemJob.model_validate_json(record.value)
                    if job.run_id != run_id:
                        continue  # reconcile covers every run in the (shared) test database
                    answered[job.job_id] += 1
                    target = KILL_PLAN[job.problem_id]
                    with sessions.begin() as session:
                        right = [job.round == target and i == 0 for i in range(job.n)]
                        texts = [f"{job.job_id} s{i}" for i in range(job.n)]
                        msg = answer_job(session, job, right, texts)
                    publisher.publish(VERIFIED_SAMPLES, msg)
            lines = log.read_text().splitlines() if log.exists() else []
            committed = [ln for ln in lines if ln.startswith("committed")]
            if not killed_in_window and len(committed) >= 2 and lines[-1].startswith("committed"):
                worker.send_signal(signal.SIGKILL)  # between its commit and its publish
                worker.wait()
                killed_in_window = lines[-1].split()[1]
                note = f"killed after {killed_in_window}\n"
                log.write_text(log.read_text() + note)
                worker = start_worker(common, pg_url, log, delay_s=0.0)
            with sessions() as session:
                pending = session.scalar(
                    select(func.count()).where(
                        AttemptCount.run_id == run_id, AttemptCount.state == "pending"
                    )
                )
            if killed_in_window and pending == 0:
                break
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        jobs_in.close()

    assert killed_in_window, "the worker was never killed between a commit and a publish"
    with sessions() as session:
        counts = {
            c.problem_id: (c.state, c.round, c.attempts, c.corrects)
            for c in session.scalars(select(AttemptCount).where(AttemptCount.run_id == run_id))
        }
        per_round = Counter(
            session.execute(
                select(VerdictRow.problem_id, VerdictRow.round).where(VerdictRow.run_id == run_id)
            ).all()
        )
    # No round lost: every problem went through its rounds in order up to its first correct one;
    # none repeated: each round's samples were counted once.
    assert counts == {
        "a": ("solved", 0, 1, 1),
        "b": ("solved", 1, 3, 1),
        "c": ("solved", 2, 6, 1),
        "d": ("exhausted", 2, 6, 0),
    }
    expected = {(p, r) for p, t in KILL_PLAN.items() for r in range(3 if t is None else t + 1)}
    assert set(answered) == {f"{run_id}:{p}:r{r}" for p, r in expected}
    assert per_round == {(p, r): SCHEDULE[r] for p, r in expected}

    manifests = reader(common, TRAINING_SHARDS)
    got: list[ShardManifest] = []
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        for records in manifests.poll(timeout_ms=500).values():
            got += [ShardManifest.model_validate_json(r.value) for r in records]
    got = [m for m in got if m.run_id == run_id]
    manifests.close()
    publisher.close()
    assert got and {m.shard_id for m in got} == {f"{run_id}:phase2"}
    assert got[0].files[0].rows == 3  # a, b, c: one kept solution each
    shards.verify(got[0].files[0])


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker_main(*sys.argv[2:8])


@pytest.mark.parametrize(
    ("right", "wrong", "ratio", "min_right", "kept"),
    [
        (10, 4, 1.0, 0, (4, 4)),  # the paper: 1:1
        (3, 9, 1.0, 0, (3, 3)),
        (10, 0, 1.0, 0, (0, 0)),  # no self-correction at all: the paper keeps nothing
        (10, 0, 1.0, 6, (0, 6)),  # ... a floor of right ones keeps a phase-1 set
        (10, 4, 2.0, 0, (4, 8)),  # two right per wrong
        (5, 4, 2.0, 0, (2, 4)),
    ],
)
def test_phase1_balance_keeps_the_paper_ratio_unless_relaxed(
    right: int, wrong: int, ratio: float, min_right: int, kept: tuple[int, int]
) -> None:
    assert balanced_counts(right, wrong, ratio, min_right) == kept


def test_the_oracle_arm_trains_on_reference_solutions_without_a_marker(
    sqlite_url: str, tmp_path: Path
) -> None:
    sessions = make_sessionmaker(make_engine(sqlite_url))
    settings = make_settings(tmp_path, oracle=True)
    pids = ["p0", "p1"]
    run_id = add_run(sessions, phase1=[(p, f"Question {p}?", "1") for p in pids])
    with sessions.begin() as session:  # p0 has a reference solution, p1 has none
        problem = session.scalars(select(Problem).where(Problem.problem_id == "p0")).one()
        problem.solution = "1 + 0 = 1.\nThe answer is \\boxed{1}."
    published = []
    for i, pid in enumerate(pids):
        msg = phase1_verdicts(run_id, pid, "WR" if i else "RR")
        with sessions.begin() as session:
            add_generations(session, phase1_job(run_id, pid), [["1", "Review.", f"{CHECKS} 1"]])
            published += sampler.on_verdicts(session, msg, settings)
    assert [m.stage for m in published] == ["phase1", "oracle"]
    oracle = published[1]
    assert oracle.base_model == settings.inference.model  # from the base model, like M1
    (row,) = read_rows(oracle.files[0].path)
    assert row["source"] == "oracle" and row["problem_id"] == "p0"
    assert row["completion"][0]["content"] == "1 + 0 = 1.\nThe answer is \\boxed{1}."
    system = row["prompt"][0]["content"]
    assert settings.sampler.marker_multi_turn not in system  # a control: no marker
    with sessions.begin() as session:  # announced once; the control plane announces it again
        assert sampler.on_verdicts(session, msg, settings) == []
    lost = [m for m in reconcile(sessions, settings) if isinstance(m, ShardManifest)]
    assert sorted(m.stage for m in lost if m.run_id == run_id) == ["oracle", "phase1"]
