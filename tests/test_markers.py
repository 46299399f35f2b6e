"""Markers reach inference: a trained checkpoint keeps the prompt the settings give its stage,
and phase-2 sampling and evaluation prompt it with exactly that, whatever its shard held; a base
model gets the plain prompt.

The backend is a recording stand-in (what is checked is the prompt the code builds); the real
trainer writing the manifest runs in tests/test_trainer.py and tests/test_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_generator import RecordingBackend

from generator_svc.handler import GeneratorStats, handle_jobs
from shared.core.db import make_engine, make_sessionmaker
from shared.core.messages import ProblemJob, SamplingParams, ShardManifest
from shared.core.settings import GeneratorSettings, Settings
from shared.core.shards import write_jsonl
from shared.datasets.rows import BenchmarkProblem
from shared.method.evaluation import SYSTEM_PROMPT, generate
from shared.method.markers import PROMPT_MANIFEST, inference_prompt, render
from shared.method.prompts import load_prompts
from trainer_svc.handler import write_checkpoint_prompt

PLAIN = load_prompts("v1").system


def trained_checkpoint(
    tmp_path: Path, settings: Settings, stage: str = "joint", sources: tuple[str, ...] = ()
) -> Path:
    """A model folder with the prompt manifest the trainer writes for a shard of ``stage``
    holding rows of ``sources``."""
    rows = [
        {
            **render(PLAIN, "What is 1 + 1?", "It is \\boxed{2}.", source, settings.sampler),
            "source": source,
            "run_id": "r",
            "problem_id": f"p{i}",
            "sample_id": f"p{i}:0",
        }
        for i, source in enumerate(sources)
    ]
    model = tmp_path / f"model-{stage}-{'-'.join(sources)}"
    model.mkdir()
    shard = write_jsonl(rows, model / "shard.jsonl")
    manifest = ShardManifest(
        run_id="r", shard_id=f"r:{stage}", stage=stage, base_model="embedded", files=[shard]
    )
    write_checkpoint_prompt(model, manifest, settings)
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
        n=2,
    )


@pytest.mark.parametrize("style", ["system", "prefix", "none"])
def test_the_generator_samples_a_checkpoint_with_its_manifest_prompt(
    style: str, tmp_path: Path, sqlite_url: str
) -> None:
    settings = Settings(sampler={"marker_style": style})
    model = trained_checkpoint(tmp_path, settings, "phase1", ("multi-turn",))
    expected = inference_prompt(str(model), PLAIN)
    if style == "system":
        assert expected.system == f"{PLAIN}\n{settings.sampler.marker_multi_turn}"
    else:  # under the prefix style the marker is what the answers start with, not the prompt
        assert expected.system == PLAIN

    backend = RecordingBackend()
    handle_jobs(
        [sampling_job(model)],
        make_sessionmaker(make_engine(sqlite_url)),
        lambda _m: backend,
        load_prompts("v1"),
        lambda _topic, _d: None,
        GeneratorStats(),
        GeneratorSettings(max_new_tokens=8),
    )
    ((conversations, _params),) = backend.calls
    assert conversations[0][0] == {"role": "system", "content": expected.system}


def test_the_evaluator_prompts_each_model_as_its_manifest_says(tmp_path: Path) -> None:
    settings = Settings()
    settings.sampler.inference_marker = "rejection"
    model = trained_checkpoint(tmp_path, settings, "joint", ("multi-turn", "rejection"))
    problems = [BenchmarkProblem(id="1", question="What is 3 + 3?", gold="6", dataset="x")]

    prompt = inference_prompt(str(model), SYSTEM_PROMPT)
    assert prompt.system == f"{PLAIN}\n{settings.sampler.marker_rejection}"
    backend = RecordingBackend()
    generate("think-twice", problems, backend, SamplingParams(max_new_tokens=8), prompt.system)
    assert [convs[0][0]["content"] for convs, _ in backend.calls] == [prompt.system] * 2

    base = inference_prompt("embedded", SYSTEM_PROMPT)  # no manifest: the harness's prompt
    assert base.system == SYSTEM_PROMPT


def test_m2_gets_the_same_prompt_whether_phase1_kept_a_row_or_none(tmp_path: Path) -> None:
    # Run C's phase 1 kept one multi-turn row, run D's none: both M2s must be evaluated alike.
    # The trainer is handed the shard; the prompt must not follow the sources it holds (a rule
    # that took the one source a shard saw gave the second M2 the rejection marker).
    settings = Settings()
    with_row = trained_checkpoint(tmp_path, settings, "joint", ("multi-turn", "rejection"))
    without = trained_checkpoint(tmp_path, settings, "joint", ("rejection", "rejection"))
    prompts = [inference_prompt(str(m), SYSTEM_PROMPT) for m in (with_row, without)]
    assert prompts[0] == prompts[1]
    marker = settings.sampler.marker_multi_turn  # of sampler.inference_marker's source
    assert prompts[0].system == f"{PLAIN}\n{marker}"
    oracle = trained_checkpoint(tmp_path, settings, "oracle", ("oracle",))
    assert inference_prompt(str(oracle), SYSTEM_PROMPT).system == PLAIN  # no marker


def test_a_manifest_records_the_prompt_and_marker(tmp_path: Path) -> None:
    settings = Settings()
    model = trained_checkpoint(tmp_path, settings, "phase1", ("multi-turn",))
    manifest = json.loads((model / PROMPT_MANIFEST).read_text())
    assert manifest == {
        "system": f"{PLAIN}\n{settings.sampler.marker_multi_turn}",
        "marker": settings.sampler.marker_multi_turn,
        "marker_style": "system",
    }


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
        GeneratorSettings(max_new_tokens=8, sampling_example=example),
    )
    ((conversations, _params),) = backend.calls
    assert conversations[0] == [
        {"role": "system", "content": PLAIN},
        {"role": "user", "content": f"{example}\n\n{job.question}"},
    ]
