"""Markers reach inference: a trained checkpoint keeps the prompt it was trained with, and
phase-2 sampling and evaluation prompt it with exactly that; a base model gets the plain prompt.

The backend is a recording stand-in (what is checked is the prompt the code builds); the real
trainer writing the manifest runs in tests/test_trainer.py and tests/test_pipeline.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_generator import RecordingBackend

from generator_svc.handler import GeneratorStats, handle_jobs
from shared.core.db import make_engine, make_sessionmaker
from shared.core.messages import ProblemJob, SamplingParams
from shared.core.settings import SamplerSettings, Settings
from shared.datasets.rows import BenchmarkProblem
from shared.method.evaluation import SYSTEM_PROMPT, generate, model_prompt
from shared.method.markers import (
    PROMPT_MANIFEST,
    inference_prompt,
    prompt_manifest,
    render,
    write_prompt_manifest,
)
from shared.method.prompts import load_prompts

PLAIN = load_prompts("v1").system


def trained_checkpoint(tmp_path: Path, settings: SamplerSettings, sources: list[str]) -> Path:
    """A model folder with the prompt manifest of a shard holding ``sources``' rows."""
    rows = [
        {**render(PLAIN, "What is 1 + 1?", "It is \\boxed{2}.", source, settings), "source": source}
        for source in sources
    ]
    model = tmp_path / "model"
    model.mkdir()
    write_prompt_manifest(model, prompt_manifest(rows, settings))
    return model


def sampling_job(model: Path) -> ProblemJob:
    return ProblemJob(
        run_id="run-m",
        kind="sample",
        problem_id="p1",
        job_id="run-m:p1:r0",
        phase=2,
        question="What is 2 + 2?",
        gold="4",
        model=str(model),
        params=SamplingParams(n=2, max_new_tokens=8),
    )


@pytest.mark.parametrize("style", ["system", "prefix", "none"])
def test_the_generator_samples_a_checkpoint_with_its_manifest_prompt(
    style: str, tmp_path: Path, sqlite_url: str
) -> None:
    settings = SamplerSettings(marker_style=style)
    model = trained_checkpoint(tmp_path, settings, ["multi-turn"])
    expected = inference_prompt(str(model), PLAIN, "rejection")  # M1 saw only multi-turn
    assert expected.source == "multi-turn"
    if style == "system":
        assert expected.system == f"{PLAIN}\n{settings.marker_multi_turn}"
    else:
        assert expected.system == PLAIN
    assert expected.prefix == (settings.marker_multi_turn if style == "prefix" else "")

    backend = RecordingBackend()
    handle_jobs(
        [sampling_job(model)],
        make_sessionmaker(make_engine(sqlite_url)),
        lambda _m: backend,
        load_prompts("v1"),
        lambda _topic, _d: None,
        GeneratorStats(),
        "rejection",
    )
    ((conversations, _params),) = backend.calls
    assert conversations[0][0] == {"role": "system", "content": expected.system}


def test_the_evaluator_prompts_each_model_as_it_was_trained(tmp_path: Path) -> None:
    settings = Settings()
    settings.sampler.inference_marker = "rejection"
    model = trained_checkpoint(tmp_path, settings.sampler, ["multi-turn", "rejection"])
    problems = [BenchmarkProblem(id="1", question="What is 3 + 3?", gold="6", dataset="x")]

    prompt = model_prompt(str(model), settings)
    assert prompt.source == "rejection"  # trained on both: the setting chooses
    assert prompt.system == f"{PLAIN}\n{settings.sampler.marker_rejection}"
    backend = RecordingBackend()
    generate("think-twice", problems, backend, SamplingParams(max_new_tokens=8), prompt.system)
    assert [convs[0][0]["content"] for convs, _ in backend.calls] == [prompt.system] * 2

    base = model_prompt("embedded", settings)  # no manifest: the harness's plain prompt
    assert (base.system, base.source) == (SYSTEM_PROMPT, "")


def test_a_manifest_records_the_training_rows_prompt(tmp_path: Path) -> None:
    settings = SamplerSettings()
    model = trained_checkpoint(tmp_path, settings, ["rejection", "multi-turn"])
    text = (model / PROMPT_MANIFEST).read_text()
    assert settings.marker_rejection in text and settings.marker_multi_turn in text


def test_a_sampling_example_goes_before_the_question_in_generation_only(
    tmp_path: Path, sqlite_url: str
) -> None:
    example = "Sam has 5 pens and gets 3 more. 5 + 3 = 8. The answer is \\boxed{8}."
    backend = RecordingBackend()
    job = sampling_job(tmp_path / "no-model")  # no prompt manifest: the base model's prompt
    handle_jobs(
        [job],
        make_sessionmaker(make_engine(sqlite_url)),
        lambda _m: backend,
        load_prompts("v1"),
        lambda _topic, _d: None,
        GeneratorStats(),
        example=example,
    )
    ((conversations, _params),) = backend.calls
    assert conversations[0] == [
        {"role": "system", "content": PLAIN},
        {"role": "user", "content": f"{example}\n\n{job.question}"},
    ]
