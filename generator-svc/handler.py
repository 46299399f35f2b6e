"""generator-svc: phase-1 multi-turn dialogues and phase-2 sampling jobs.

A batch of jobs is generated turn by turn: turn 1 of every dialogue in the batch runs as one
backend call, then turn 2, then turn 3, so the CPU or GPU always sees full batches.

Idempotency: the generation rows are written before the dialogue is published. A redelivered job
whose rows exist is not generated again; its dialogue is rebuilt from the rows and re-published
(the earlier delivery may have crashed between the write and the publish).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from shared.core.db import GenerationRow, insert_ignore
from shared.core.messages import DIALOGUES, Dialogue, Generation, ProblemJob, SamplingParams
from shared.core.metrics import TOKENS_GENERATED
from shared.core.runs import cancelled_runs, stored_dialogues
from shared.core.settings import GeneratorSettings
from shared.inference import Backend
from shared.method.markers import InferencePrompt, inference_prompt
from shared.method.prompts import Prompts

# Seeds of turn t of a dialogue are params.seed + t * TURN_SEED_STRIDE, so turns never share one.
TURN_SEED_STRIDE = 1_000_003


@dataclass
class GeneratorStats:
    """What /status shows."""

    jobs_done: int = 0
    jobs_in_flight: int = 0
    tokens: int = 0
    generate_seconds: float = 0.0
    regenerations_skipped: int = 0
    cancelled_skipped: int = 0
    current: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, float | int | list[str]]:
        rate = self.tokens / self.generate_seconds if self.generate_seconds else 0.0
        return {**self.__dict__, "tokens_per_second": round(rate, 2)}


def job_params(job: ProblemJob, settings: GeneratorSettings) -> SamplingParams:
    """What the generator samples a job with: the job's count and seed, its own settings. A
    phase-2 sample may end at its answer line; a dialogue's turns never do."""
    return SamplingParams(
        n=job.n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=job.seed,
        stop_after_answer=settings.stop_after_answer and job.phase == 2,
    )


def turn_params(params: SamplingParams, turn: int) -> SamplingParams:
    """One sample per turn, with a seed of its own."""
    return params.model_copy(update={"n": 1, "seed": params.seed + turn * TURN_SEED_STRIDE})


def run_dialogues(
    backend: Backend,
    prompts: Prompts,
    jobs: list[ProblemJob],
    prompt: InferencePrompt,
    settings: GeneratorSettings,
) -> list[list[Generation]]:
    """Phase 1: solve, review, rewrite; each turn batched over all jobs (grouped by params)."""
    example = settings.sampling_example
    convs = [prompt.conversation(job.question, example) for job in jobs]
    turns: list[list[str]] = [[] for _ in jobs]
    tokens: list[list[int]] = [[] for _ in jobs]
    finish: list[list[str]] = [[] for _ in jobs]
    follow_ups = [None, prompts.review, prompts.rewrite]
    for turn, follow_up in enumerate(follow_ups):
        if follow_up is not None:
            for conv in convs:
                conv.append({"role": "user", "content": follow_up})
        for idxs, params in _group_by_params(jobs, settings, turn):
            results = backend.chat([convs[i] for i in idxs], params)
            for i, result in zip(idxs, results, strict=True):
                completion = result.completions[0]
                convs[i].append({"role": "assistant", "content": completion.text})
                turns[i].append(completion.text)
                tokens[i].append(completion.tokens)
                finish[i].append(completion.finish_reason)
    return [
        [
            Generation(
                sample_id=f"{job.job_id}:0",
                turns=turns[i],
                tokens=tokens[i],
                finish_reasons=finish[i],
                seed=job.seed,
            )
        ]
        for i, job in enumerate(jobs)
    ]


def run_samples(
    backend: Backend, jobs: list[ProblemJob], prompt: InferencePrompt, settings: GeneratorSettings
) -> list[list[Generation]]:
    """Phase 2: n independent single-turn solutions per job; sample i has seed + i."""
    out: list[list[Generation]] = [[] for _ in jobs]
    for idxs, params in _group_by_params(jobs, settings, None):
        convs = [prompt.conversation(jobs[i].question, settings.sampling_example) for i in idxs]
        for i, result in zip(idxs, backend.chat(convs, params), strict=True):
            out[i] = [
                Generation(
                    sample_id=f"{jobs[i].job_id}:{k}",
                    turns=[c.text],
                    tokens=[c.tokens],
                    finish_reasons=[c.finish_reason],
                    seed=params.seed + k,
                )
                for k, c in enumerate(result.completions)
            ]
    return out


def _group_by_params(
    jobs: list[ProblemJob], settings: GeneratorSettings, turn: int | None
) -> list[tuple[list[int], SamplingParams]]:
    """Jobs with equal sampling parameters (seed included) go to the backend as one batch.

    A run gives all jobs of a phase and round the same seed, so batches stay full and the
    recorded seed is the one really used.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    params = [job_params(job, settings) for job in jobs]
    for i, p in enumerate(params):
        groups[p.model_dump_json()].append(i)
    return [
        (idxs, turn_params(params[idxs[0]], turn) if turn is not None else params[idxs[0]])
        for idxs in groups.values()
    ]


def handle_jobs(
    jobs: list[ProblemJob],
    sessions: sessionmaker[Session],
    backend_for: Callable[[str], Backend],
    prompts: Prompts,
    publish: Callable[[str, Dialogue], None],
    stats: GeneratorStats,
    settings: GeneratorSettings,
) -> None:
    """Generate what is new, store it, publish a dialogue per job (stored ones re-published).
    Jobs of cancelled runs are dropped. A trained checkpoint is prompted as its prompt manifest
    says; the base model with the plain system prompt."""
    cancelled = cancelled_runs(sessions, {job.run_id for job in jobs})
    stats.cancelled_skipped += sum(job.run_id in cancelled for job in jobs)
    jobs = [job for job in jobs if job.run_id not in cancelled]
    done = stored_dialogues(sessions, jobs)
    todo = [job for job in jobs if job.job_id not in done]
    stats.regenerations_skipped += len(jobs) - len(todo)
    stats.jobs_in_flight, stats.current = len(todo), [job.problem_id for job in todo]
    by_model: dict[str, list[ProblemJob]] = defaultdict(list)
    for job in todo:
        by_model[job.model].append(job)
    for model, group in by_model.items():
        backend = backend_for(model)
        prompt = inference_prompt(model, prompts.system)
        start = time.perf_counter()
        dialogues = [j for j in group if j.kind == "dialogue"]
        samples = [j for j in group if j.kind == "sample"]
        gens = run_dialogues(backend, prompts, dialogues, prompt, settings)
        gens += run_samples(backend, samples, prompt, settings)
        stats.generate_seconds += time.perf_counter() - start
        tokens = sum(sum(g.tokens) for gs in gens for g in gs)
        stats.tokens += tokens
        TOKENS_GENERATED.inc(tokens)
        with sessions.begin() as session:
            for job, job_gens in zip(dialogues + samples, gens, strict=True):
                rows = generation_rows(job, job_gens, backend.model_id, prompts.version, settings)
                insert_ignore(session, GenerationRow, rows)
    done = stored_dialogues(sessions, jobs)
    for job in jobs:
        publish(DIALOGUES, done[job.job_id])
    stats.jobs_done += len(jobs)
    stats.jobs_in_flight, stats.current = 0, []


def generation_rows(
    job: ProblemJob,
    gens: list[Generation],
    model_id: str,
    version: str,
    settings: GeneratorSettings,
) -> list[dict]:
    """One generations-table row per sample of ``job``, with its sampling parameters."""
    params = job_params(job, settings).model_dump()
    return [
        dict(
            run_id=job.run_id,
            problem_id=job.problem_id,
            sample_id=g.sample_id,
            job_id=job.job_id,
            phase=job.phase,
            round=job.round,
            turns=g.turns,
            tokens=g.tokens,
            finish_reasons=g.finish_reasons,
            model=model_id,
            prompt_version=version,
            params=params,
            seed=g.seed,
        )
        for g in gens
    ]
