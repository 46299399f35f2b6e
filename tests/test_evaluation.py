"""Evaluation: statistics, the three modes on the real embedded model, eval-svc's handler and CLI.

The model is the embedded SmolLM2-135M with tiny budgets (a few problems, 1-2 samples, 32-48
tokens): these tests prove the plumbing and the bookkeeping, not the model's skill.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from dualphase.cli import app
from eval_svc.handler import handle
from shared.core.db import (
    EvalResult,
    EvalSampleRow,
    Run,
    make_engine,
    make_sessionmaker,
    transaction,
)
from shared.core.messages import BASE_CHECKPOINT_ID, CheckpointReady, SamplingParams
from shared.core.settings import (
    CommonSettings,
    DataSettings,
    EvalSettings,
    InferenceConfig,
    Settings,
)
from shared.datasets import BenchmarkProblem, load_benchmark, read_benchmark_file
from shared.inference import Backend, ChatResult, OneModel, load_backend
from shared.inference.model import resolve_model
from shared.method.evaluation import (
    CORRECT_PROMPT,
    SELF_REWARDING_SUFFIX,
    SELF_REWARDING_SYSTEM,
    SYSTEM_PROMPT,
    VERIFY_PROMPT,
    cut_at_verdict,
    evaluate,
    evaluate_benchmark,
    generate,
    summarise,
    verdict,
)
from shared.method.grading import Grader, extract_answer, is_equivalent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ON_DISK = ["gsm8k", "math500", "aime24", "amc23", "svamp", "gaokao2023en"]
TABMWP_ROW = {
    "table_title": "Coins",
    "table": "Name | Coins\nAda | 3\nBo | 5",
    "question": "How many coins do Ada and Bo have in all?",
    "choices": None,
    "answer": "8",
    "ans_type": "integer_number",
    "pid": "t1",
}


def tiny_config(**update: object) -> EvalSettings:
    return EvalSettings(**{"samples": 2, "max_new_tokens": 48, **update})


@pytest.fixture(scope="module")
def backend() -> Backend:
    return load_backend(InferenceConfig(batch_size=8, threads=1))


@pytest.fixture(scope="module")
def grader() -> Grader:
    with Grader(timeout_s=5.0) as g:
        yield g


@dataclass
class Recording:
    """A real backend that records every chat call; optionally scripts the self-verdict turn."""

    inner: Backend
    verdicts: list[str] = field(default_factory=list)  # texts for the 2nd call, cycled
    calls: list[tuple[list[list[dict[str, str]]], SamplingParams]] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def chat(self, conversations: list, params: SamplingParams) -> list[ChatResult]:
        self.calls.append((conversations, params))
        results = self.inner.chat(conversations, params)
        if self.verdicts and len(self.calls) == 2:
            results = [
                replace(
                    r,
                    completions=[
                        replace(c, text=self.verdicts[i % len(self.verdicts)])
                        for c in r.completions
                    ],
                )
                for i, r in enumerate(results)
            ]
        return results


def test_pass_at_1_is_the_mean_over_problems_with_a_normal_ci() -> None:
    accuracy, ci95, mean_tokens, median_tokens = summarise(
        [[True, False], [True, True], [False, False]], [10, 20, 30, 40, 50, 100]
    )
    assert accuracy == pytest.approx(0.5)
    assert ci95 == pytest.approx(1.96 * 0.5 / math.sqrt(3))  # per-problem stdev is 0.5
    assert (mean_tokens, median_tokens) == (pytest.approx(250 / 6), 35)
    assert summarise([[True]], [7])[1] == 0.0  # one problem: no spread to measure


def test_verdict_is_parsed_as_rlhflow_parses_it() -> None:
    assert verdict("step 2 is off. [VERIFY] wrong.") is False
    assert verdict("All steps check out. [VERIFY] correct.") is True
    # Exactly one tag, case-sensitive; anything else is unusable and the first answer stands.
    assert verdict("[VERIFY] wrong at first... no: [VERIFY] correct.") is None
    assert verdict("[verify] wrong.") is None
    assert verdict("I think it is fine.") is None
    assert cut_at_verdict("x \\boxed{[VERIFY] wrong.} then more text") == "x [VERIFY] wrong."


def test_unknown_mode_is_rejected_by_name(backend: Backend) -> None:
    problem = BenchmarkProblem(id="1", question="1+1?", gold="2", dataset="gsm8k")
    with pytest.raises(ValueError, match="'twice'"):
        generate("twice", [problem], backend, SamplingParams())


def test_embedded_model_evaluates_every_benchmark(
    backend: Backend, grader: Grader, tmp_path: Path, data_settings: DataSettings
) -> None:
    (tmp_path / "tabmwp.jsonl").write_text(json.dumps(TABMWP_ROW) + "\n")
    benchmarks = {name: load_benchmark(name, data_settings, limit=2) for name in ON_DISK}
    benchmarks["tabmwp"] = read_benchmark_file("tabmwp", tmp_path / "tabmwp.jsonl")
    config = tiny_config()
    summaries = evaluate(config, backend, grader, benchmarks)

    assert [(s.benchmark, s.mode) for s in summaries] == [(b, "base") for b in benchmarks]
    for summary, problems in zip(summaries, benchmarks.values(), strict=True):
        gold = {p.id: p.gold for p in problems}
        assert summary.problems == len(problems) and summary.samples == 2
        assert sorted((r.problem_id, r.sample) for r in summary.results) == sorted(
            (p.id, i) for p in problems for i in range(2)
        )
        for r in summary.results:
            assert len(r.turns) == 1 and 0 < r.tokens <= config.max_new_tokens
            assert r.extracted == extract_answer(r.turns[0])
            right = bool(r.extracted) and is_equivalent(r.extracted, gold[r.problem_id])
            assert r.correct == right
        by_problem = [
            [r.correct for r in summary.results if r.problem_id == p.id] for p in problems
        ]
        assert summary.accuracy == pytest.approx(
            sum(sum(c) / len(c) for c in by_problem) / len(problems)
        )
        assert summary.mean_tokens == pytest.approx(
            sum(r.tokens for r in summary.results) / len(summary.results)
        )


def test_a_right_answer_is_graded_right(backend: Backend, grader: Grader) -> None:
    # The gold is whatever the model answers, so grading must say right for every sample.
    problem = BenchmarkProblem(id="p", question="What is 2 + 3?", gold="", dataset="gsm8k")
    first = generate("base", [problem], backend, SamplingParams(n=1, max_new_tokens=48))[0]
    answer = extract_answer(first.turns[0])
    assert answer, first.turns[0]
    config = tiny_config(samples=1, temperature=0.7)  # generate() above used the same params
    summary = evaluate_benchmark(
        config, backend, grader, "own-answer", [problem.model_copy(update={"gold": answer})], "base"
    )
    assert summary.results[0].turns == first.turns
    assert summary.accuracy == 1.0


def test_think_twice_re_asks_with_the_first_answer_in_one_batched_call(
    backend: Backend, grader: Grader, data_settings: DataSettings
) -> None:
    recording = Recording(backend)
    problems = load_benchmark("gsm8k", data_settings, limit=2)
    summary = evaluate_benchmark(tiny_config(), recording, grader, "gsm8k", problems, "think-twice")

    assert len(recording.calls) == 2  # one call per round, all problems and samples together
    second_round, params = recording.calls[1]
    assert params.n == 1 and len(second_round) == 4
    for r, conversation in zip(summary.results, second_round, strict=True):
        question = next(p.question for p in problems if p.id == r.problem_id)
        assert conversation[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert conversation[1]["content"].startswith(question)
        # The whole first answer goes back, not only its extracted value (Tian et al.).
        assert (
            f"\u2019s previous answer is: <answer> {r.turns[0]} </answer>"
            in (conversation[1]["content"])
        )
        assert len(r.turns) == 2 and r.final() == r.turns[1]
        assert r.extracted == extract_answer(r.turns[1])


def test_self_rewarding_corrects_only_the_samples_judged_wrong(
    backend: Backend, grader: Grader, data_settings: DataSettings
) -> None:
    # The 135M model rarely writes a verdict tag, so the verdict turn's text is scripted; the
    # first answers and the corrections are the model's own.
    recording = Recording(backend, verdicts=["Step 1 is off. [VERIFY] wrong.", "[VERIFY] correct."])
    problems = load_benchmark("svamp", data_settings, limit=2)
    summary = evaluate_benchmark(
        tiny_config(), recording, grader, "svamp", problems, "self-rewarding"
    )

    assert len(recording.calls) == 3
    first_round, verify_round = recording.calls[0][0], recording.calls[1][0]
    corrections = recording.calls[2][0]
    assert first_round[0][0] == {"role": "system", "content": SELF_REWARDING_SYSTEM}
    assert first_round[0][1]["content"].endswith(SELF_REWARDING_SUFFIX)
    assert all(c[-1] == {"role": "user", "content": VERIFY_PROMPT} for c in verify_round)
    judged_wrong = [r for r in summary.results if verdict(r.turns[1]) is False]
    assert len(corrections) == len(judged_wrong) == 2
    cut = {"role": "assistant", "content": "Step 1 is off. [VERIFY] wrong."}
    for conversation in corrections:
        assert conversation[-2] == cut  # the self-evaluation, cut at its verdict
        assert conversation[-1] == {"role": "user", "content": CORRECT_PROMPT}
    for r in summary.results:
        corrected = verdict(r.turns[1]) is False
        assert len(r.turns) == (3 if corrected else 2)
        assert r.final() == (r.turns[2] if corrected else r.turns[0])
        assert r.extracted == extract_answer(r.final())


def test_eval_svc_stores_checkpoint_and_base_results_once_and_copies_them_to_an_untrained_m1(
    pg_url: str, tmp_path: Path, data_settings: DataSettings
) -> None:
    run_id = f"eval-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        common=CommonSettings(database_url=pg_url),
        inference=InferenceConfig(batch_size=8, threads=1),
        eval=EvalSettings(
            benchmarks=["gsm8k"],
            limit=2,
            samples=1,
            max_new_tokens=32,
            baseline_modes=["think-twice"],
        ),
        data=data_settings,
    )
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        session.add(Run(id=run_id, config=settings.model_dump(mode="json")))
    # The "trained" checkpoint: the embedded model's folder under another path, so that it is
    # not taken for the base model (any model folder will do).
    base_path = resolve_model("embedded", settings.inference)
    (tmp_path / "m1").symlink_to(base_path)
    path = str(tmp_path / "m1")
    msg = CheckpointReady(run_id=run_id, checkpoint_id=f"{run_id}-m1", stage="M1", path=path)

    summaries = handle(msg, settings, sessions, OneModel(settings.inference))
    assert [(s.benchmark, s.mode) for s in summaries] == [
        ("gsm8k", "base"),
        ("gsm8k", "think-twice"),
        ("gsm8k", "base"),
    ]
    with sessions() as session:
        results = session.scalars(select(EvalResult).where(EvalResult.run_id == run_id)).all()
        assert sorted((r.checkpoint_id, r.mode) for r in results) == sorted(
            [
                (BASE_CHECKPOINT_ID, "base"),
                (BASE_CHECKPOINT_ID, "think-twice"),
                (msg.checkpoint_id, "base"),
            ]
        )
        for r in results:
            rows = session.scalars(
                select(EvalSampleRow).where(
                    EvalSampleRow.run_id == run_id,
                    EvalSampleRow.checkpoint_id == r.checkpoint_id,
                    EvalSampleRow.mode == r.mode,
                )
            ).all()
            assert (r.problems, r.samples, len(rows)) == (2, 1, 2)
            assert r.accuracy == pytest.approx(sum(x.correct for x in rows) / 2)
            assert r.mean_tokens == pytest.approx(sum(x.tokens for x in rows) / 2)
            assert all(len(x.turns) == (2 if r.mode == "think-twice" else 1) for x in rows)

    # A redelivered message finds everything done: no model is loaded, nothing is written.
    assert handle(msg, settings, sessions, OneModel(settings.inference)) == []
    with sessions() as session:
        count = (
            select(func.count()).select_from(EvalSampleRow).where(EvalSampleRow.run_id == run_id)
        )
        assert session.scalar(count) == 6

    # An M1 whose training was skipped (an empty shard) is the base model with the base prompt:
    # it gets copies of M0's results, and no model is loaded.
    def no_model(model: str) -> Backend:
        raise AssertionError(f"{model} was loaded")

    untrained = msg.model_copy(update={"checkpoint_id": f"{run_id}-m1b", "path": base_path})
    assert handle(untrained, settings, sessions, no_model) == []  # type: ignore[arg-type]
    with sessions() as session:

        def results(checkpoint_id: str) -> tuple[list[tuple], list[tuple]]:
            where = (EvalResult.run_id == run_id, EvalResult.checkpoint_id == checkpoint_id)
            summaries = session.scalars(select(EvalResult).where(*where)).all()
            where = (EvalSampleRow.run_id == run_id, EvalSampleRow.checkpoint_id == checkpoint_id)
            samples = session.scalars(
                select(EvalSampleRow).where(*where, EvalSampleRow.mode == "base")
            ).all()
            return (
                [(r.benchmark, r.mode, r.problems, r.accuracy, r.mean_tokens) for r in summaries],
                sorted((r.problem_id, r.sample, r.turns, r.tokens, r.correct) for r in samples),
            )

        copied, base = results(untrained.checkpoint_id), results(BASE_CHECKPOINT_ID)
        assert copied[0] == [x for x in base[0] if x[1] == "base"] and len(copied[0]) == 1
        assert copied[1] == base[1] and len(copied[1]) == 2
    engine.dispose()


def test_eval_command_prints_the_table_and_writes_a_report(
    tmp_path: Path, data_settings: DataSettings
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--benchmarks",
            "gsm8k,amc23",
            "--limit",
            "1",
            "--samples",
            "1",
            "--max-new-tokens",
            "32",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        env={
            "COLUMNS": "200",
            "DUALPHASE_INFERENCE__THREADS": "1",
            "DUALPHASE_DATA__LOCAL_DIR": str(data_settings.local_dir),
            "DUALPHASE_DATA__CACHE_DIR": str(data_settings.cache_dir),
        },
    )
    assert result.exit_code == 0, result.output
    assert "pass@1" in result.output
    assert "gsm8k" in result.output and "amc23" in result.output
    assert (tmp_path / "report" / "report.html").is_file()


def test_eval_command_names_a_benchmark_it_cannot_load(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--benchmarks",
            "tabmwp",
            "--limit",
            "1",
        ],
        env={
            "DUALPHASE_DATA__LOCAL_DIR": str(tmp_path),  # no copy of Arietem/tabmwp there
            "DUALPHASE_DATA__CACHE_DIR": str(tmp_path / "cache"),
            "HF_HUB_OFFLINE": "1",
        },
    )
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: ") and "Arietem/tabmwp" in line and str(tmp_path) in line
    assert "data.local_dir" in line


def test_eval_svc_evaluates_a_baseline_model_once_under_its_own_protocol(
    sqlite_url: str, backend: Backend, tmp_path: Path
) -> None:
    """A baseline model (eval.baseline_models) is evaluated with M0, under checkpoint id
    'baseline:<name>', in its own mode and with its protocol's prompts (RLHFlow's for
    self-rewarding), once per run; M0 keeps the harness prompt."""
    run_id = f"eval-{uuid.uuid4().hex[:8]}"
    base_path = resolve_model("embedded", InferenceConfig())
    (tmp_path / "sr").symlink_to(base_path)  # "a released self-rewarding checkpoint"
    name = "self-rewarding (test)"
    settings = Settings(
        common=CommonSettings(database_url=sqlite_url),
        inference=InferenceConfig(batch_size=8, threads=1),
        eval=EvalSettings(
            benchmarks=["synthetic"],
            limits={"synthetic": 1},
            samples=1,
            max_new_tokens=24,
            baseline_modes=[],
            baseline_models=[
                {"name": name, "model": str(tmp_path / "sr"), "mode": "self-rewarding"}
            ],
        ),
    )
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        session.add(Run(id=run_id, config=settings.model_dump(mode="json")))
    asked: dict[str, Recording] = {}

    def backend_for(model: str) -> Recording:
        asked[model] = Recording(backend)
        return asked[model]

    m0 = CheckpointReady(
        run_id=run_id, checkpoint_id=BASE_CHECKPOINT_ID, stage="M0", path=base_path
    )
    summaries = handle(m0, settings, sessions, backend_for)  # type: ignore[arg-type]
    assert [(s.benchmark, s.mode) for s in summaries] == [
        ("synthetic", "base"),
        ("synthetic", "self-rewarding"),
    ]
    assert list(asked) == [base_path, str(tmp_path / "sr")]
    first_turn = asked[str(tmp_path / "sr")].calls[0][0][0]
    assert first_turn[0] == {"role": "system", "content": SELF_REWARDING_SYSTEM}
    assert asked[base_path].calls[0][0][0][0] == {"role": "system", "content": SYSTEM_PROMPT}
    with sessions() as session:
        results = session.scalars(select(EvalResult).where(EvalResult.run_id == run_id)).all()
        assert sorted((r.checkpoint_id, r.mode) for r in results) == [
            (BASE_CHECKPOINT_ID, "base"),
            (f"baseline:{name}", "self-rewarding"),
        ]
    # A later checkpoint's message finds the baseline model done: evaluated once per run.
    asked.clear()
    m1 = CheckpointReady(
        run_id=run_id, checkpoint_id=f"{run_id}-m1", stage="M1", path=str(tmp_path / "sr")
    )
    summaries = handle(m1, settings, sessions, backend_for)  # type: ignore[arg-type]
    assert [(s.mode, s.model) for s in summaries] == [
        ("base", asked[str(tmp_path / "sr")].model_id)
    ]
    engine.dispose()
