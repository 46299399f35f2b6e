"""Evaluation: run benchmark problems through a Backend in one mode, grade them, summarise.

Modes (the paper's baselines, all prompted like the Qwen2.5-Math evaluation harness):

- ``base``: one answer per sample.
- ``think-twice``: round 2 is a fresh single-turn request: the question, then the model's whole
  round-1 answer inside ``<answer> </answer>`` and "please re-answer" (Tian et al., 2025, the
  prompt of a-m-team/a-m-models). The round-2 answer is graded.
- ``self-rewarding``: RLHFlow's protocol (Xiong et al., 2025; the prompts of their sequential
  rejection sampling, ``infer_math/process_prompt_turn{1,2,3}.py``): solve; a self-evaluation
  that must end in exactly one ``[VERIFY] correct.`` or ``[VERIFY] wrong.``; on "wrong", a third
  turn (the self-evaluation cut at its verdict) asks for the mistake and a corrected answer. The
  correction is graded when there is one; the first answer stands on "correct" and when the model
  misses the format (their fallback for such models). On a model not trained for it (M0, as a
  baseline mode) this is *intrinsic self-correction*, the prompted variant their paper compares
  with, and reports call it so; the self-rewarding correction of the literature is a trained
  model, evaluated under this protocol as a baseline model of its own (``eval.baseline_models``).

Every round is one ``backend.chat`` call over all problems of a benchmark, so the backend can batch.

pass@1 is the mean over problems of the fraction of a problem's k samples that are right. Its 95%
confidence interval is 1.96 standard errors of that mean over problems (normal approximation).
A sample's length is the tokens generated for it, summed over its turns: the cost of the mode.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.core.messages import SamplingParams
from shared.core.metrics import TOKENS_GENERATED
from shared.core.settings import EvalSettings, Settings
from shared.datasets import BenchmarkProblem, load_benchmarks
from shared.inference import Backend, load_backend
from shared.method.grading import Grader
from shared.method.markers import inference_prompt

# The system prompt of the harness's "qwen25-math-cot" template.
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
# Tian et al.'s prompt, character for character (the apostrophe is U+2019).
THINK_TWICE_PROMPT = (
    "{question}\nThe assistant\u2019s previous answer is: <answer> {answer} </answer>, "
    "and please re-answer."
)
# RLHFlow's turn-1 system prompt and user suffix, turn-2 and turn-3 user messages.
SELF_REWARDING_SYSTEM = (
    "You are a mathematical reasoning assistant. For each problem, follow these steps strictly:"
    "\n\n1. Solve the problem using step-by-step reasoning and output the final answer within "
    "\\boxed{}.\n\nAlways ensure clarity, correctness, and adherence to the required format."
)
SELF_REWARDING_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
VERIFY_PROMPT = (
    "2. Perform a self-evaluation:\n   - You may include reasoning to verify correctness.\n"
    "   - However, your final self-evaluation **must** be in one of the following formats:\n"
    "     ```\n     [VERIFY] correct.\n     ```\n     or  \n     ```\n"
    "     [VERIFY] wrong.\n     ```"
)
CORRECT_PROMPT = (
    "3. please identify the mistake in your previous reasoning, revise your reasoning path and "
    "output a corrected final answer within \\boxed{}."
)
MODES = ("base", "think-twice", "self-rewarding")
TURN_SEED_STRIDE = 1_000_003

Message = dict[str, str]
# (benchmark, mode, problems done, problems in all, tokens generated so far)
OnProgress = Callable[[str, str, int, int, int], None]


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


def conversation(system: str, question: str) -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def verdict(text: str) -> bool | None:
    """RLHFlow's parse: exactly one ``[VERIFY]``, then True for correct, False for wrong; None
    (unusable) otherwise. Case-sensitive, as theirs."""
    if text.count("[VERIFY]") != 1:
        return None
    if "[VERIFY] correct" in text:
        return True
    return False if "[VERIFY] wrong" in text else None


def cut_at_verdict(text: str) -> str:
    """The self-evaluation up to its ``[VERIFY] wrong.`` (a boxed verdict unboxed), as RLHFlow
    feeds it back: what the model wrote after its verdict is not part of the conversation."""
    for boxed in ("\\boxed{\\text{[VERIFY] wrong.}}", "\\boxed{[VERIFY] wrong.}"):
        text = text.replace(boxed, "[VERIFY] wrong.")
    return text.split("[VERIFY] wrong")[0] + "[VERIFY] wrong."


def sampling_params(config: EvalSettings) -> SamplingParams:
    return SamplingParams(
        n=config.samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
    )


def generate(
    mode: str,
    problems: list[BenchmarkProblem],
    backend: Backend,
    params: SamplingParams,
    system: str = SYSTEM_PROMPT,
) -> list[SampleResult]:
    """All samples of all problems in one mode, ungraded, in (problem, sample) order. ``system``
    is the model's system prompt (a trained checkpoint's, with its marker, or the harness's)."""
    if mode not in MODES:
        raise ValueError(f"evaluation mode {mode!r}: expected one of {', '.join(MODES)}")

    def first(problem: BenchmarkProblem) -> list[Message]:
        if mode == "self-rewarding":
            return conversation(SELF_REWARDING_SYSTEM, problem.question + SELF_REWARDING_SUFFIX)
        return conversation(system, problem.question)

    def think_twice(problem: BenchmarkProblem, sample: SampleResult) -> list[Message]:
        prompt = THINK_TWICE_PROMPT.format(question=problem.question, answer=sample.turns[0])
        return conversation(system, prompt)

    def verify(problem: BenchmarkProblem, sample: SampleResult) -> list[Message]:
        return [
            *first(problem),
            {"role": "assistant", "content": sample.turns[0]},
            {"role": "user", "content": VERIFY_PROMPT},
        ]

    def correct(problem: BenchmarkProblem, sample: SampleResult) -> list[Message]:
        return [
            *verify(problem, sample),
            {"role": "assistant", "content": cut_at_verdict(sample.turns[1])},
            {"role": "user", "content": CORRECT_PROMPT},
        ]

    samples: list[tuple[BenchmarkProblem, SampleResult]] = []
    for problem, result in zip(
        problems, backend.chat([first(p) for p in problems], params), strict=True
    ):
        for i, completion in enumerate(result.completions):
            sample = SampleResult(problem.id, i, [completion.text], completion.tokens)
            samples.append((problem, sample))

    # Later rounds continue each sample on its own (one completion per conversation), with a
    # seed of their own so that no two rounds share a random stream.
    def turn(t: int) -> SamplingParams:
        return params.model_copy(update={"n": 1, "seed": params.seed + t * TURN_SEED_STRIDE})

    if mode == "think-twice":
        _next_turn(backend, turn(1), samples, think_twice)
    elif mode == "self-rewarding":
        _next_turn(backend, turn(1), samples, verify)
        wrong = [(p, s) for p, s in samples if verdict(s.turns[1]) is False]
        for _, sample in samples:
            sample.graded_turn = 0  # the first answer stands unless corrected below
        _next_turn(backend, turn(2), wrong, correct)
    return [sample for _, sample in samples]


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
    system: str = SYSTEM_PROMPT,
    on_progress: OnProgress | None = None,
    chunk: int = 0,
) -> BenchmarkSummary:
    """Generate, grade and summarise one benchmark in one mode. With ``chunk``, the problems go
    to the backend that many at a time and ``on_progress`` hears after each chunk."""
    if not problems:
        raise ValueError(f"benchmark {name!r}: no problems to evaluate")
    start = time.perf_counter()
    samples: list[SampleResult] = []
    step = chunk or len(problems)
    if on_progress is not None:
        on_progress(name, mode, 0, len(problems), 0)
    for first in range(0, len(problems), step):
        part = problems[first : first + step]
        samples += generate(mode, part, backend, sampling_params(config), system)
        if on_progress is not None:
            on_progress(
                name, mode, first + len(part), len(problems), sum(s.tokens for s in samples)
            )
    TOKENS_GENERATED.inc(sum(s.tokens for s in samples))
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
    system: str = SYSTEM_PROMPT,
    on_progress: OnProgress | None = None,
    chunk: int = 0,
) -> list[BenchmarkSummary]:
    """Every benchmark in every mode (default: ``config.modes``); ``on_done`` sees each result,
    ``on_progress`` each chunk of problems (``evaluate_benchmark``)."""
    summaries = []
    for mode in modes or config.modes:
        for name, problems in benchmarks.items():
            summary = evaluate_benchmark(
                config, backend, grader, name, problems, mode, system, on_progress, chunk
            )
            if on_done is not None:
                on_done(summary)
            summaries.append(summary)
    return summaries


def evaluate_model(
    settings: Settings,
    model: str | None = None,
    on_done: Callable[[BenchmarkSummary], None] | None = None,
    on_progress: OnProgress | None = None,
) -> list[BenchmarkSummary]:
    """Evaluate one model (default: the configured one) without the services; with
    ``on_progress``, a few batches' worth of problems at a time, reporting after each."""
    config = settings.eval
    benchmarks = load_benchmarks(config, settings.data)
    backend = load_backend(settings.inference, model)
    prompt = inference_prompt(model or "", SYSTEM_PROMPT)
    try:
        with Grader(config.grade_timeout_s, config.grade_workers) as grader:
            # Four batches of rows a chunk: the batch stays full most of the time.
            chunk = max(4 * settings.inference.batch_size // config.samples, 8)
            return evaluate(
                config,
                backend,
                grader,
                benchmarks,
                on_done=on_done,
                system=prompt.system,
                on_progress=on_progress,
                chunk=chunk if on_progress else 0,
            )
    finally:
        backend.close()  # a server it started (inference.serve_command) stops with it
