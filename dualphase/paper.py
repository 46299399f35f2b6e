"""What the paper states, in one place: each setting the paper gives a value for, and each it
leaves open (``NOT_STATED``), and a run's settings against it. ``configs/paper.yaml`` is tested
against this table (tests/test_report.py); the run report prints ``against_paper``
(``dualphase.run_story.deviations``)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# What the paper states, and only that: the one place in the code (configs/paper.yaml is tested
# against it, tests/test_report.py). A setting the paper leaves open is NOT_STATED: the run's
# value is its own choice, never a deviation.
NOT_STATED = "not stated"
NOT_RECORDED = "not recorded"  # a setting missing from an older run's config snapshot
PAPER_MODEL = "Qwen/Qwen2.5-7B-Instruct"
PAPER_N1_EXAMPLE = 4  # n1 is configurable; 4 is the paper's example, not a stated value
PAPER_LATER_ROUNDS = [10, 100]  # n2, n3: for problems still unsolved after n1, then after n2
PAPER_BENCHMARKS = ["gsm8k", "math500", "aime24", "amc23", "svamp", "tabmwp", "gaokao2023en"]
PAPER_TEACHER = "DeepSeek-R1-Distill-Qwen-32B"  # the distilled baseline's teacher
SELF_REWARDING = "a trained self-rewarding model (Xiong et al. 2025)"


@dataclass(frozen=True)
class RunFacts:
    """What a run is compared with the paper on: its config snapshot (``runs.config``), its
    problems per phase and their datasets, and its arm's label ("" without one)."""

    config: dict[str, Any]
    problems: dict[int, int] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    arm: str = ""

    @classmethod
    def of_config(cls, config: dict[str, Any]) -> RunFacts:
        """A run of these settings alone: ``dualphase run`` draws run.phase1_problems and
        run.phase2_problems of run.pool."""
        run = config.get("run") or {}
        problems = {1: run.get("phase1_problems", 0), 2: run.get("phase2_problems", 0)}
        return cls(config, problems, (run.get("pool", ""),))


def _setting(path: str, index: slice | int | None = None) -> Callable[[RunFacts], Any]:
    section, _, name = path.partition(".")

    def read(facts: RunFacts) -> Any:
        value = (facts.config.get(section) or {}).get(name, NOT_RECORDED)
        return value if index is None or value == NOT_RECORDED else value[index]

    return read


def _markers(facts: RunFacts) -> str:
    style = _setting("sampler.marker_style")(facts)
    return style if style in (NOT_RECORDED, "none") else "both sources"


def _same_name(run: str, paper: str) -> bool:
    """A model named with or without its hub organisation."""
    return run.lower().split("/")[-1] == paper.lower().split("/")[-1]


def _teachers(facts: RunFacts) -> str:
    if facts.arm.startswith("distilled ("):
        return facts.arm.removeprefix("distilled (").removesuffix(")")
    return "no distilled arm"


def _self_rewarding(facts: RunFacts) -> str:
    config = facts.config.get("eval") or {}
    models = config.get("baseline_models") or []
    if names := [b["name"] for b in models if b.get("mode") == "self-rewarding"]:
        return "baseline model: " + ", ".join(names)
    if "self-rewarding" in (config.get("baseline_modes") or []):
        return "none: M0 prompted with its protocol (intrinsic self-correction)"
    return "none"


@dataclass(frozen=True)
class Stated:
    """One thing the paper states (``paper``) or leaves open (NOT_STATED), and how to read the
    run's value of it (a report reads the run's config snapshot and its problems). ``in_config``:
    the settings alone decide it (``RunFacts.of_config``), so configs/paper.yaml must agree with
    every stated one."""

    name: str
    paper: Any
    read: Callable[[RunFacts], Any]
    note: str = ""
    same: Callable[[Any, Any], bool] = operator.eq
    in_config: bool = True

    def deviates(self, value: Any) -> str:
        if self.paper == NOT_STATED:
            return ""
        if value == NOT_RECORDED:
            return "unknown"
        return "no" if self.same(value, self.paper) else "yes"


PAPER: list[Stated] = [
    Stated("inference.model", PAPER_MODEL, _setting("inference.model"), "the base model M0"),
    Stated(
        "phase-1 dialogue",
        "three turns",
        lambda facts: "three turns",
        "solve; review (verify, backtrack, decompose, reason backward); rewrite",
        in_config=False,
    ),
    Stated("sampler.phases", 2, _setting("sampler.phases")),
    Stated(
        "sampler.phase1_row",
        "chain",
        _setting("sampler.phase1_row"),
        "the whole dialogue as one long chain",
    ),
    Stated("sampler.balance_ratio", 1.0, _setting("sampler.balance_ratio"), "final-right, 1:1"),
    Stated("sampler.balance_min_right", 0, _setting("sampler.balance_min_right")),
    Stated(
        "sampler.schedule[0] (n1)",
        NOT_STATED,
        _setting("sampler.schedule", 0),
        f"configurable; the paper's example is {PAPER_N1_EXAMPLE}",
    ),
    Stated(
        "sampler.schedule[1:] (n2, n3)",
        PAPER_LATER_ROUNDS,
        _setting("sampler.schedule", slice(1, None)),
        "10 more, then 100 more, for the problems still unsolved",
    ),
    Stated("sampler.keep_k", NOT_STATED, _setting("sampler.keep_k")),
    Stated("source markers", "both sources", _markers, "sampler.marker_style none drops them"),
    Stated("sampler.marker_style", NOT_STATED, _setting("sampler.marker_style"), "their rendering"),
    Stated("sampler.mode", NOT_STATED, _setting("sampler.mode"), "joint or sequential"),
    Stated("generator.temperature", 0.6, _setting("generator.temperature")),
    Stated("generator.top_p", NOT_STATED, _setting("generator.top_p")),
    Stated("generator.max_new_tokens", NOT_STATED, _setting("generator.max_new_tokens")),
    Stated(
        "generator.sampling_example",
        "",
        _setting("generator.sampling_example"),
        "the method's prompts hold no worked example",
    ),
    Stated(
        "generator.stop_after_answer",
        False,
        _setting("generator.stop_after_answer"),
        "samples are not cut",
    ),
    Stated(
        "verifier.disabled_rules",
        [],
        _setting("verifier.disabled_rules"),
        "every rule filter of the method",
    ),
    Stated(
        "eval.benchmarks",
        PAPER_BENCHMARKS,
        _setting("eval.benchmarks"),
        same=lambda run, paper: sorted(run) == sorted(paper),
    ),
    Stated("eval.samples (k)", NOT_STATED, _setting("eval.samples"), "pass@1 averaged over k"),
    Stated("eval.temperature", 0.6, _setting("eval.temperature")),
    Stated("eval.top_p", 1.0, _setting("eval.top_p")),
    Stated("eval.max_new_tokens", NOT_STATED, _setting("eval.max_new_tokens")),
    Stated(
        "self-rewarding baseline",
        SELF_REWARDING,
        _self_rewarding,
        "eval.baseline_models; configs/paper.yaml names no checkpoint (none is shipped)",
        same=lambda run, paper: run.startswith("baseline model:"),
        in_config=False,
    ),
    Stated(
        "phase-1 problems",
        10_000,
        lambda facts: facts.problems.get(1, 0),
        "15k training problems in all (run.phase1_problems)",
    ),
    Stated(
        "phase-2 problems",
        5_000,
        lambda facts: facts.problems.get(2, 0),
        "run.phase2_problems",
    ),
    Stated(
        "training problems from",
        "DeepScaleR",
        lambda facts: ", ".join(facts.datasets) or NOT_RECORDED,
        "run.pool",
        same=lambda run, paper: run.lower() == paper.lower(),
    ),
    Stated(
        "distilled baseline: teacher",
        PAPER_TEACHER,
        _teachers,
        "the arm with sampler.arm_solutions",
        same=_same_name,
        in_config=False,
    ),
]


def against_paper(facts: RunFacts) -> list[list[str]]:
    """One row per entry of PAPER: the setting, this run's value, the paper's, whether it
    deviates ("yes", "no", "" where the paper is silent, "unknown" where the run did not record
    it), and the note; deviations first."""
    rows = []
    for stated in PAPER:
        value = stated.read(facts)
        rows.append(
            [stated.name, _show(value), _show(stated.paper), stated.deviates(value), stated.note]
        )
    order = {"yes": 0, "unknown": 1, "": 2, "no": 3}
    return sorted(rows, key=lambda row: order[row[3]])


def _show(value: object) -> str:
    return "(none)" if value in ("", []) else shorten(value)


def shorten(value: object, width: int = 60, end: str = "...") -> str:
    """A value on one line, cut to ``width`` characters (the tables of reports and pages)."""
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - len(end)] + end
