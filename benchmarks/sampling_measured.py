"""Phase-2 sampling schedules measured on a real model (`dualphase bench sampling-measured`).

The simulation's comparison (``benchmarks/sampling_simulation.py``) with real samples and real
verdicts. Samples are drawn as sampler-svc and generator-svc draw them: the sampling prompt, the
generator's temperature and token budget, and sample j of a problem (j = 0, 1, ...) seeded
``seed+j`` whatever the schedule, because round r starts at the run seed plus all earlier rounds'
samples. So one stream of samples per problem serves every schedule. It is drawn in waves (the
configured schedule's rounds, continued up to the longest cap), one batched ``backend.chat`` per
wave for every problem still unsolved, and graded with the verifier's own verdict logic (a correct
sample is an accepted one, as in sampler-svc). A problem stops at the wave holding its first
accepted sample. Every schedule is then evaluated on the index of each problem's first accepted
sample by ``benchmarks.sampling_simulation.run_schedule``, exactly as in the simulation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from generator_svc.handler import run_samples
from shared.core.messages import Dialogue, ProblemJob, SamplingParams
from shared.core.settings import Settings
from shared.datasets.synthetic import SyntheticProblem
from shared.inference import load_backend
from shared.method.grading import Grader
from shared.method.markers import InferencePrompt
from shared.method.prompts import load_prompts
from verifier_svc.handler import verify_dialogue

NEVER = 10**9  # first index of a problem never solved within its drawn samples


def waves_up_to(schedule: list[int], cap: int) -> list[int]:
    """The schedule's rounds, cut or continued with one more round so they add up to ``cap``."""
    waves, total = [], 0
    for n in schedule:
        if total + n >= cap:
            break
        waves.append(n)
        total += n
    return [*waves, cap - total]


def first_indices(streams: list[dict]) -> np.ndarray:
    """One run (row) of each problem's 1-based index of its first accepted sample, or NEVER."""
    firsts = [next((i + 1 for i, ok in enumerate(s["accepted"]) if ok), NEVER) for s in streams]
    return np.array([firsts])


def _job(problem: SyntheticProblem, r: int, params: SamplingParams) -> ProblemJob:
    return ProblemJob(
        run_id="measured",
        kind="sample",
        problem_id=problem.id,
        job_id=f"{problem.id}:r{r}",
        phase=2,
        question=problem.question,
        gold=str(problem.answer),
        dataset="synthetic",
        round=r,
        params=params,
    )


def draw(
    settings: Settings,
    problems: list[SyntheticProblem],
    waves: list[int],
    seed: int,
    log: Callable[[str], None] = print,
    save: Path | None = None,
) -> list[dict]:
    """Each problem's stream (accepted flag and token count per sample), drawn up to the wave
    holding its first accepted sample, or through every wave. ``save`` gets the streams after
    each wave, so a long run stopped early keeps what it drew."""
    backend = load_backend(settings.inference)
    prompts = load_prompts(settings.generator.prompt_version)
    gen = settings.generator
    streams = {p.id: {"id": p.id, "level": p.level, "accepted": [], "tokens": []} for p in problems}
    pending, start = list(problems), 0
    with Grader(settings.verifier.grade_timeout_s) as grader:
        for r, n in enumerate(waves):
            began = time.perf_counter()
            params = SamplingParams(
                n=n,
                temperature=gen.temperature,
                top_p=gen.top_p,
                max_new_tokens=gen.max_new_tokens,
                seed=seed + start,
            )
            jobs = [_job(p, r, params) for p in pending]
            for job, gens in zip(
                jobs, run_samples(backend, jobs, InferencePrompt(prompts.system)), strict=True
            ):
                dialogue = Dialogue(
                    run_id=job.run_id,
                    problem_id=job.problem_id,
                    job_id=job.job_id,
                    phase=2,
                    round=r,
                    gold=job.gold,
                    model=backend.model_id,
                    prompt_version=prompts.version,
                    params=params,
                    samples=gens,
                )
                verified = verify_dialogue(dialogue, grader, settings.verifier)
                stream = streams[job.problem_id]
                stream["accepted"] += [v.accepted for v in verified.verdicts]
                stream["tokens"] += [g.tokens[-1] for g in gens]
            pending = [p for p in pending if not any(streams[p.id]["accepted"])]
            start += n
            seconds = time.perf_counter() - began
            log(
                f"wave {r + 1}/{len(waves)}: {n} x {len(jobs)} samples in {seconds:.0f} s, "
                f"{len(pending)} unsolved"
            )
            if save:
                save.write_text(json.dumps(list(streams.values())) + "\n")
            if not pending:
                break
    return list(streams.values())


def _draw_part(args: tuple) -> list[dict]:
    settings, problems, waves, seed, tag, save = args
    return draw(settings, problems, waves, seed, lambda line: print(f"[{tag}] {line}"), save)


def draw_parallel(
    settings: Settings,
    problems: list[SyntheticProblem],
    waves: list[int],
    seed: int,
    workers: int,
    out: Path | None,
) -> list[dict]:
    """``draw`` split over ``workers`` processes (one model each), problems dealt round-robin so
    each gets every difficulty level; the streams come back in problem order."""
    parts = [
        (
            settings,
            problems[w::workers],
            waves,
            seed,
            f"worker {w}",
            out.with_suffix(f".part{w}.json") if out else None,
        )
        for w in range(workers)
    ]
    if workers == 1:
        results = [_draw_part(parts[0])]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_draw_part, parts))
    by_id = {s["id"]: s for part in results for s in part}
    return [by_id[p.id] for p in problems]
