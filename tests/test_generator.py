"""generator-svc logic: batching of turns, phase-2 samples, idempotent redelivery.

The backend here is a recording stand-in (this is a test of the handler's logic); real
generation through the service is in tests/test_pipeline.py.
"""

from __future__ import annotations

from generator_svc.handler import GeneratorStats, handle_jobs, job_params
from shared.core.db import GenerationRow, Problem, make_engine, make_sessionmaker
from shared.core.messages import Dialogue, ProblemJob, SamplingParams
from shared.core.runs import problem_job
from shared.core.settings import GeneratorSettings
from shared.inference import ChatResult, Completion
from shared.method.prompts import load_prompts


class RecordingBackend:
    """Answers every conversation with its turn number; records each chat call."""

    model_id = "recorder@sha256:0"

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[dict[str, str]]], SamplingParams]] = []

    def chat(self, conversations: list[list[dict[str, str]]], params: SamplingParams) -> list:
        self.calls.append((conversations, params))
        turn = sum(m["role"] == "assistant" for m in conversations[0]) + 1
        return [
            ChatResult(
                [Completion(f"turn {turn} sample {i}", 3 + turn, "stop") for i in range(params.n)],
                self.model_id,
            )
            for _ in conversations
        ]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def job(i: int, kind: str = "dialogue", n: int = 1) -> ProblemJob:
    return ProblemJob(
        run_id="run-g",
        kind=kind,
        problem_id=f"p{i}",
        job_id=f"run-g:p{i}:{kind}",
        phase=1 if kind == "dialogue" else 2,
        question=f"What is {i} + 1?",
        gold=str(i + 1),
        n=n,
        seed=7,
    )


def run(jobs: list[ProblemJob], backend: RecordingBackend, db_url: str) -> list[Dialogue]:
    published: list[Dialogue] = []
    sessions = make_sessionmaker(make_engine(db_url))
    prompts = load_prompts("v1")
    handle_jobs(
        jobs,
        sessions,
        lambda _m: backend,
        prompts,
        lambda _topic, d: published.append(d),
        GeneratorStats(),
        GeneratorSettings(max_new_tokens=8),
    )
    return published


def test_each_turn_of_a_batch_is_one_backend_call(sqlite_url: str) -> None:
    backend = RecordingBackend()
    dialogues = run([job(i) for i in range(4)], backend, sqlite_url)
    assert [len(convs) for convs, _ in backend.calls] == [4, 4, 4]
    review = backend.calls[1][0][0]
    assert review[2] == {"role": "assistant", "content": "turn 1 sample 0"}
    assert "backtrack" in review[3]["content"] and review[3]["role"] == "user"
    assert len({params.seed for _, params in backend.calls}) == 3, "each turn has its own seed"
    assert [d.samples[0].turns for d in dialogues][0] == [
        "turn 1 sample 0",
        "turn 2 sample 0",
        "turn 3 sample 0",
    ]
    assert dialogues[0].samples[0].tokens == [4, 5, 6]
    assert dialogues[0].samples[0].finish_reasons == ["stop", "stop", "stop"]
    assert dialogues[0].prompt_version == "v1" and dialogues[0].model == backend.model_id


def test_phase2_job_gives_n_samples_with_their_own_seeds(sqlite_url: str) -> None:
    (dialogue,) = run([job(0, kind="sample", n=3)], RecordingBackend(), sqlite_url)
    assert [s.sample_id for s in dialogue.samples] == [f"{dialogue.job_id}:{k}" for k in range(3)]
    assert [s.seed for s in dialogue.samples] == [7, 8, 9]
    assert [s.finish_reasons for s in dialogue.samples] == [["stop"]] * 3


def test_redelivered_job_is_republished_from_the_database_not_generated_again(
    db_url: str,
) -> None:
    backend = RecordingBackend()
    jobs = [job(10), job(11)]
    first = run(jobs, backend, db_url)
    calls = len(backend.calls)
    second = run(jobs, backend, db_url)
    assert len(backend.calls) == calls, "a stored job must not be generated again"
    assert sorted(d.model_dump_json() for d in first) == sorted(d.model_dump_json() for d in second)
    sessions = make_sessionmaker(make_engine(db_url))
    with sessions() as s:
        mine = GenerationRow.problem_id.in_(["p10", "p11"])
        rows = s.query(GenerationRow).filter(GenerationRow.run_id == "run-g", mine).count()
    assert rows == 2


def test_stop_after_answer_reaches_phase2_samples_and_never_dialogues() -> None:
    settings = GeneratorSettings(stop_after_answer=True)
    assert job_params(job(0, kind="sample"), settings).stop_after_answer
    assert not job_params(job(0), settings).stop_after_answer
    assert not job_params(job(0, kind="sample"), GeneratorSettings()).stop_after_answer


def test_the_generator_samples_with_its_own_settings_and_the_jobs_count_and_seed() -> None:
    settings = GeneratorSettings(temperature=0.3, top_p=0.9, max_new_tokens=77)
    problem = Problem(run_id="r", problem_id="p", phase=2, question="1+1?", gold="2", dataset="x")
    sample = problem_job("r", 5, problem, [4, 10, 100], round_=2, model="/m1")
    assert (sample.n, sample.seed, sample.model) == (100, 5 + 4 + 10, "/m1")
    params = job_params(sample, settings)
    assert (params.n, params.seed, params.temperature, params.top_p) == (100, 19, 0.3, 0.9)
    assert params.max_new_tokens == 77
