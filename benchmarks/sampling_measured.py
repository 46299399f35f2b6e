"""Phase-2 sampling schedules measured on a real model: ``python -m benchmarks.sampling_measured``.

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
from typing import Annotated

import numpy as np
import typer

from benchmarks.sampling_simulation import PAPER_SCHEDULE, compare, format_table
from generator_svc.handler import job_params, run_samples
from shared.core.messages import Dialogue, ProblemJob
from shared.core.settings import Settings, load_settings
from shared.datasets.synthetic import SyntheticProblem, make_problems
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


def _job(problem: SyntheticProblem, r: int, n: int, seed: int) -> ProblemJob:
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
        n=n,
        seed=seed,
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
            jobs = [_job(p, r, n, seed + start) for p in pending]
            prompt = InferencePrompt(prompts.system)
            for job, gens in zip(jobs, run_samples(backend, jobs, prompt, gen), strict=True):
                dialogue = Dialogue(
                    run_id=job.run_id,
                    problem_id=job.problem_id,
                    job_id=job.job_id,
                    phase=2,
                    round=r,
                    gold=job.gold,
                    model=backend.model_id,
                    prompt_version=prompts.version,
                    params=job_params(job, gen),
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


app = typer.Typer(add_completion=False)
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")]


@app.command()
def main(
    problems: Annotated[int, typer.Option(help="Synthetic problems to sample.")] = 100,
    problem_seed: Annotated[int, typer.Option(help="Seed of the problem draw.")] = 7,
    seed: Annotated[int, typer.Option(help="Run seed: sample j is seeded seed + j.")] = 0,
    cap: Annotated[int, typer.Option(help="Samples per problem of the uniform schedule.")] = 100,
    schedule: Annotated[
        list[str] | None,
        typer.Option(
            help="Schedule to compare (repeatable). Default: the paper's and the configured one."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Drawing processes, one model each.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write the per-problem streams here.")] = None,
    replay: Annotated[
        Path | None, typer.Option(help="Evaluate the streams of an earlier --out, no drawing.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Measure phase-2 schedules on the configured model: the simulation's table, real samples."""
    settings = load_settings(config)
    schedules = {"paper": PAPER_SCHEDULE, "configured": settings.sampler.schedule}
    if schedule:
        schedules = {
            f"option {i + 1}": [int(n) for n in text.split(",")] for i, text in enumerate(schedule)
        }
    longest = max(cap, *(sum(s) for s in schedules.values()))  # the stream serves every cap
    if replay:
        saved = json.loads(replay.read_text())
        streams, meta = saved["streams"], saved["meta"]
    else:
        waves = waves_up_to(settings.sampler.schedule, longest)
        began = time.perf_counter()
        streams = draw_parallel(
            settings, make_problems(problems, problem_seed), waves, seed, workers, out
        )
        meta = {
            "problems": problems,
            "problem_seed": problem_seed,
            "seed": seed,
            "waves": waves,
            "model": settings.inference.model,
            "dtype": settings.inference.dtype,
            "batch_size": settings.inference.batch_size,
            "max_new_tokens": settings.generator.max_new_tokens,
            "temperature": settings.generator.temperature,
            "disabled_rules": settings.verifier.disabled_rules,
            "seconds": round(time.perf_counter() - began, 1),
        }
        if out:
            out.write_text(json.dumps({"meta": meta, "streams": streams}) + "\n")
    drawn = sum(len(s["accepted"]) for s in streams)
    tokens = sum(sum(s["tokens"]) for s in streams)
    typer.echo(
        f"{len(streams)} problems, {drawn} samples ({tokens} tokens) drawn in "
        f"{meta['seconds']} s; {meta}"
    )
    first = first_indices(streams)
    for level in sorted({s["level"] for s in streams}):
        at = sorted(
            int(f)
            for s, f in zip(streams, first[0], strict=True)
            if s["level"] == level and f <= cap
        )
        count = sum(s["level"] == level for s in streams)
        typer.echo(f"level {level}: {len(at)}/{count} solved within {cap}, first at {at}")
    typer.echo(
        format_table(compare(first, cap, schedules), meta["batch_size"], settings.sampler.keep_k)
    )


if __name__ == "__main__":
    app()
