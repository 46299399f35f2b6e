"""Evaluation: run benchmark problems through a Backend in one mode, grade them, summarise.

Modes (the paper's baselines, all prompted like the Qwen2.5-Math evaluation harness):

- ``base``: one answer per sample.
- ``think-twice``: round 2 asks the question again with the round-1 final answer attached and
  asks the model to re-answer (Tian et al., 2025). The round-2 answer is graded.
- ``self-rewarding``: answer, then a self-evaluation ending in ``[VERIFY] correct`` or
  ``[VERIFY] wrong``; a sample judged wrong gets a third turn that corrects it (Xiong et al., 2025).
  The correction is graded when there is one, the first answer otherwise.

Every round is one ``backend.chat`` call over all problems of a benchmark, so the backend can batch.

pass@1 is the mean over problems of the fraction of a problem's k samples that are right. Its 95%
confidence interval is 1.96 standard errors of that mean over problems (normal approximation).
A sample's length is the tokens generated for it, summed over its turns: the cost of the mode.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.core.messages import SamplingParams
from shared.core.settings import EvalSettings, Settings
from shared.datasets import BenchmarkProblem, load_benchmark
from shared.inference import Backend, load_backend
from shared.method.grading import Grader, extract_answer

# The system prompt of the harness's "qwen25-math-cot" template.
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
THINK_TWICE_PROMPT = (
    "{question}\nThe assistant's previous answer is: <answer>{answer}</answer>, "
    "and please re-answer."
)
VERIFY_PROMPT = (
    "Perform a self-evaluation: you may include reasoning to verify correctness. However, your "
    "final self-evaluation must be in one of the following formats: [VERIFY] correct. or "
    "[VERIFY] wrong."
)
CORRECT_PROMPT = (
    "Since your initial response is self-evaluated as incorrect, there might be an error in the "
    "solution above because of a lack of understanding of the question. Please correct the "
    "error, if any, and rewrite the solution. Put your final answer within \\boxed{}."
)
MODES = ("base", "think-twice", "self-rewarding")
# eval_results.checkpoint_id of a run's base model when no M0 checkpoint message names it.
BASE_CHECKPOINT_ID = "base"
TURN_SEED_STRIDE = 1_000_003
_VERDICT = re.compile(r"\[VERIFY\]\s*(correct|wrong)", re.IGNORECASE)

Message = dict[str, str]


@dataclass
class SampleResult:
    """One graded sample of one problem."""

    problem_id: str
    sample: int
    turns: list[str] = field(default_factory=list)
    tokens: int = 0
    extracted: str = ""
    correct: bool = False
    error: str = ""
    graded_turn: int = -1  # index into turns of the response that is graded

    def final(self) -> str:
        return self.turns[self.graded_turn]


@dataclass
class BenchmarkSummary:
    """The result of one (model, benchmark, mode): the summary numbers and every sample."""

    benchmark: str
    mode: str
    model: str
    problems: int
    samples: int
    accuracy: float
    ci95: float
    mean_tokens: float
    median_tokens: float
    seconds: float
    results: list[SampleResult]


def first_turn(question: str) -> list[Message]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def says_wrong(verdict_text: str) -> bool:
    """True if the last ``[VERIFY]`` verdict in the text is "wrong"; no verdict means no change."""
    verdicts = _VERDICT.findall(verdict_text)
    return bool(verdicts) and verdicts[-1].lower() == "wrong"


def sampling_params(config: EvalSettings) -> SamplingParams:
    return SamplingParams(
        n=config.samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
    )


def generate(
    mode: str, problems: list[BenchmarkProblem], backend: Backend, params: SamplingParams
) -> list[SampleResult]:
    """All samples of all problems in one mode, ungraded, in (problem, sample) order."""
    if mode not in MODES:
        raise ValueError(f"evaluation mode {mode!r}: expected one of {', '.join(MODES)}")
    samples: list[tuple[BenchmarkProblem, SampleResult]] = []
    for problem, result in zip(
        problems, backend.chat([first_turn(p.question) for p in problems], params), strict=True
    ):
        for i, completion in enumerate(result.completions):
            sample = SampleResult(problem.id, i, [completion.text], completion.tokens)
            samples.append((problem, sample))

    # Later rounds continue each sample on its own (one completion per conversation), with a
    # seed of their own so that no two rounds share a random stream.
    def turn(t: int) -> SamplingParams:
        return params.model_copy(update={"n": 1, "seed": params.seed + t * TURN_SEED_STRIDE})

    if mode == "think-twice":
        _next_turn(backend, turn(1), samples, _think_twice)
    elif mode == "self-rewarding":
        _next_turn(backend, turn(1), samples, _verify)
        wrong = [(p, s) for p, s in samples if says_wrong(s.turns[1])]
        for _, sample in samples:
            sample.graded_turn = 0  # the first answer stands unless corrected below
        _next_turn(backend, turn(2), wrong, _correct)
    return [sample for _, sample in samples]


def _think_twice(problem: BenchmarkProblem, sample: SampleResult) -> list[Message]:
    answer = extract_answer(sample.turns[0])
    return first_turn(THINK_TWICE_PROMPT.format(question=problem.question, answer=answer))


def _verify(problem: BenchmarkProblem, sample: SampleResult) -> list[Message]:
    return [
        *first_turn(problem.question),
        {"role": "assistant", "content": sample.turns[0]},
        {"role": "user", "content": VERIFY_PROMPT},
    ]


def _correct(problem: BenchmarkProblem, sample: SampleResult) -> list[Message]:
    return [
        *_verify(problem, sample),
        {"role": "assistant", "content": sample.turns[1]},
        {"role": "user", "content": CORRECT_PROMPT},
    ]


def _next_turn(
    backend: Backend,
    params: SamplingParams,
    samples: list[tuple[BenchmarkProblem, SampleResult]],
    prompt: Callable[[BenchmarkProblem, SampleResult], list[Message]],
) -> None:
    """One more round for every given sample, in one batched chat call."""
    if not samples:
        return
    results = backend.chat([prompt(p, s) for p, s in samples], params)
    for (_, sample), result in zip(samples, results, strict=True):
        completion = result.completions[0]
        sample.turns.append(completion.text)
        sample.tokens += completion.tokens
        sample.graded_turn = len(sample.turns) - 1


def summarise(correct: list[list[bool]], tokens: list[int]) -> tuple[float, float, float, float]:
    """pass@1, its 95% CI half-width, mean and median tokens; ``correct`` is per problem."""
    per_problem = [sum(c) / len(c) for c in correct]
    accuracy = statistics.fmean(per_problem)
    ci95 = 0.0
    if len(per_problem) > 1:
        ci95 = 1.96 * statistics.stdev(per_problem) / math.sqrt(len(per_problem))
    return accuracy, ci95, statistics.fmean(tokens), statistics.median(tokens)


def evaluate_benchmark(
    config: EvalSettings,
    backend: Backend,
    grader: Grader,
    name: str,
    problems: list[BenchmarkProblem],
    mode: str,
) -> BenchmarkSummary:
    """Generate, grade and summarise one benchmark in one mode."""
    if not problems:
        raise ValueError(f"benchmark {name!r}: no problems to evaluate")
    start = time.perf_counter()
    samples = generate(mode, problems, backend, sampling_params(config))
    gold = {p.id: p.gold for p in problems}
    grades = grader.grade_many([(s.final(), gold[s.problem_id]) for s in samples])
    by_problem: dict[str, list[bool]] = {p.id: [] for p in problems}
    for sample, grade in zip(samples, grades, strict=True):
        sample.extracted, sample.correct, sample.error = grade.extracted, grade.correct, grade.error
        by_problem[sample.problem_id].append(grade.correct)
    accuracy, ci95, mean_tokens, median_tokens = summarise(
        list(by_problem.values()), [s.tokens for s in samples]
    )
    return BenchmarkSummary(
        benchmark=name,
        mode=mode,
        model=backend.model_id,
        problems=len(problems),
        samples=config.samples,
        accuracy=accuracy,
        ci95=ci95,
        mean_tokens=mean_tokens,
        median_tokens=median_tokens,
        seconds=time.perf_counter() - start,
        results=samples,
    )


def evaluate(
    config: EvalSettings,
    backend: Backend,
    grader: Grader,
    benchmarks: dict[str, list[BenchmarkProblem]],
    modes: list[str] | None = None,
    on_done: Callable[[BenchmarkSummary], None] | None = None,
) -> list[BenchmarkSummary]:
    """Every benchmark in every mode (default: ``config.modes``); ``on_done`` sees each result."""
    summaries = []
    for mode in modes or config.modes:
        for name, problems in benchmarks.items():
            summary = evaluate_benchmark(config, backend, grader, name, problems, mode)
            if on_done is not None:
                on_done(summary)
            summaries.append(summary)
    return summaries


def load_benchmarks(config: EvalSettings) -> dict[str, list[BenchmarkProblem]]:
    """The configured benchmarks, ``config.limit`` problems each, from ``config.datasets_dir``."""
    return {
        name: load_benchmark(name, config.datasets_dir, config.limit) for name in config.benchmarks
    }


def evaluate_model(
    settings: Settings,
    model: str | None = None,
    on_done: Callable[[BenchmarkSummary], None] | None = None,
) -> list[BenchmarkSummary]:
    """Evaluate one model (default: the configured one) without the services."""
    config = settings.eval
    benchmarks = load_benchmarks(config)
    backend = load_backend(settings.inference, model)
    with Grader(config.grade_timeout_s, config.grade_workers) as grader:
        return evaluate(config, backend, grader, benchmarks, on_done=on_done)
