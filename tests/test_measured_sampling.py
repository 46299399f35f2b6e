"""`python -m benchmarks.sampling_measured`: schedules evaluated on streams of real samples.

The streams come from the embedded SmolLM2-135M through the generator's and the verifier's own
code, so these tests also prove the claim the measurement rests on: drawing round by round gives
the same samples as one pass of the whole stream (sample j is seeded seed + j).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmarks.sampling_measured import NEVER, app, draw, first_indices, waves_up_to
from benchmarks.sampling_simulation import PAPER_SCHEDULE, compare, run_schedule
from generator_svc.handler import run_samples
from shared.core.messages import ProblemJob
from shared.core.settings import Settings
from shared.datasets.synthetic import SyntheticProblem
from shared.inference import load_backend
from shared.method.markers import InferencePrompt
from shared.method.prompts import load_prompts

EASY = SyntheticProblem("easy", "What is 2 + 3? Reply with the number only.", 5, 1)
NEVER_SOLVED = SyntheticProblem("never", "What is 2 + 3? Reply with the number only.", 987654321, 5)


def test_measured_first_indices_give_exact_round_counts() -> None:
    # Paper rounds end at 4, 14, 114: firsts 1, 5, 20 stop there; NEVER spends all 114.
    first = np.array([[1, 5, 20, NEVER]])
    paper = run_schedule("paper", PAPER_SCHEDULE, first)
    assert paper.coverage == 0.75
    assert paper.samples == (4 + 14 + 114 + 114) / 4
    assert paper.ideal_samples == (1 + 5 + 20 + 114) / 4
    assert paper.smallest_wave == 4 * 4  # round 1: every problem x 4 (then 10 x 3, 100 x 2)
    assert paper.kept is None  # samples after the first correct one were never drawn
    uniform = {o.name: o for o in compare(first, 10, {})}["uniform"]
    assert uniform.coverage == 0.5 and uniform.samples == 10


def test_waves_continue_the_schedule_to_the_longest_cap() -> None:
    assert waves_up_to([1, 2, 4, 8, 16, 32, 37], 114) == [1, 2, 4, 8, 16, 32, 37, 14]
    assert waves_up_to([4, 10, 100], 50) == [4, 10, 36]
    assert waves_up_to([4, 10, 100], 114) == [4, 10, 100]


@pytest.fixture(scope="module")
def settings() -> Settings:
    s = Settings()
    s.inference.threads, s.inference.batch_size = 1, 8
    # float32 everywhere: bfloat16 samples differ between CPUs (AMX, AVX512-BF16, emulated).
    s.inference.dtype = "float32"
    s.generator.max_new_tokens = 12
    # This file is about how streams are drawn, on 12-token samples: a sample counts as correct
    # by its grade alone, so the rules that need a finished, stated answer are off here.
    s.verifier.disabled_rules = ["boxed_answer", "not_truncated", "explicit_answer"]
    s.verifier.min_tokens = 1
    return s


def test_stream_stops_at_the_first_accepted_wave_and_equals_one_pass(settings: Settings) -> None:
    # Samples answer 2 + 3 with a 5 now and then (2 of the first 12 at seed 40, 4 at seed 0, in
    # float32): 31 of them leave the easy problem unsolved with a chance under one in a thousand.
    waves, seed = [1, 2, 4, 8, 16], 40
    streams = {s["id"]: s for s in draw(settings, [EASY, NEVER_SOLVED], waves, seed)}
    never = streams["never"]
    assert len(never["accepted"]) == 31 and not any(never["accepted"])
    easy = streams["easy"]
    first = first_indices([easy])[0, 0]
    assert first != NEVER, "the model should answer 2 + 3 within 31 samples"
    ends = np.cumsum(waves)
    assert len(easy["accepted"]) == ends[np.searchsorted(ends, first)]  # stopped at its wave
    # Round by round = one pass: every sample's length matches one job of them all, drawn by the
    # generator's own code with the same settings (prompt, example, stops).
    backend = load_backend(settings.inference)
    one_job = ProblemJob(
        run_id="one-pass",
        kind="sample",
        problem_id=EASY.id,
        job_id="one-pass",
        phase=2,
        question=EASY.question,
        gold=str(EASY.answer),
        dataset="synthetic",
        n=len(easy["tokens"]),
        seed=seed,
    )
    prompt = InferencePrompt(load_prompts(settings.generator.prompt_version).system)
    [samples] = run_samples(backend, [one_job], prompt, settings.generator)
    assert [g.tokens[-1] for g in samples] == easy["tokens"]


def test_sampling_measured_command_writes_streams_and_replays_them(tmp_path: Path) -> None:
    out = tmp_path / "streams.json"
    env = {"DUALPHASE_GENERATOR__MAX_NEW_TOKENS": "8", "DUALPHASE_INFERENCE__THREADS": "1"}
    args = ["--problems", "2", "--cap", "3", "--schedule", "1,2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    # 8 tokens are fewer than the length rule's 16: nothing is accepted, every stream is whole.
    assert [len(s["accepted"]) for s in saved["streams"]] == [3, 3]
    assert saved["meta"]["waves"] == [1, 2]
    assert "| option 1: 1,2 | 2 | 0.0% | 3.00 | 1.00x |" in result.output
    replayed = CliRunner().invoke(app, [*args, "--replay", str(out)], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert result.output.splitlines()[-6:] == replayed.output.splitlines()[-6:]
