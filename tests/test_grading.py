"""Grading: harness-style extraction, equivalence on real benchmark answers and hard cases, the
worker pool's hard time limit, bad input, the verdict handler, and the `grade` command."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dualphase.cli import app
from shared.core.messages import Dialogue, Generation, SamplingParams
from shared.core.settings import VerifierSettings
from shared.datasets import read_benchmark_file
from shared.method.grading import Grade, Grader, extract_answer, is_equivalent
from verifier_svc.handler import rule_tally, verify_dialogue

# The harness files beside the repository, read as test data (each through its format module).
BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "benchmarks"


@pytest.fixture(scope="module")
def grader() -> Iterator[Grader]:
    with Grader(timeout_s=5.0, workers=2) as pool:
        yield pool


# --- extraction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("First \\boxed{1}, then finally \\boxed{\\frac{1}{\\sqrt{2}}}.", "\\frac{1}{\\sqrt{2}}"),
        ("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("so \\boxed 5$ and", "5"),
        ("Thus the answer is $18$.\nThanks", "18"),
        ("The final answer is 7.", "7"),
        ("12 apples plus 1,000 pears", "1000"),
        ("no answer here", ""),
        ("", ""),
        ("\\boxed{a{b}", "a{b}"),  # unbalanced: everything after the brace, as the harness does
    ],
)
def test_extract_answer_follows_the_harness_order(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


# --- equivalence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("25", "025"),  # AIME leading zeros
        ("27", "27.0"),  # AMC / SVAMP floats
        ("1625", "1,625"),  # thousands separator
        ("3\\sqrt{2}", "\\sqrt{18}"),  # bare LaTeX gold
        ("\\frac{1}{2}", "0.5"),
        ("1/2", "\\dfrac12"),
        ("(1,2)", "(1, 2)"),  # tuple / open interval
        ("[1,2)", "[1, 2)"),
        ("\\{2,1\\}", "\\{1,2\\}"),  # sets are unordered
        ("[-2,1)", "\\{x|-2\\leq x < 1\\}"),  # gaokao set-builder gold
        ("5.3", "5.3\\%"),  # percentages
        ("0.053", "5.3\\%"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("x^2-y^2=2", "\\frac{x^{2}}{2} - \\frac{y^{2}}{2} = 1"),
        ("5", "x=5"),
        ("\\text{Evelyn}", "Evelyn"),
        ("90", "90^\\circ"),
        ("18 dollars", "18"),
        ("\\$18", "18"),
        ("\\textbf{(073)}", "073"),
        ("6-5i", "6 - 5i"),
        ("2 \\cdot x", "2x"),  # spaces the LaTeX parser needs are kept
        ("D", "D"),  # choice letters
    ],
)
def test_equivalent_answers(pred: str, gold: str) -> None:
    assert is_equivalent(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("2", "3"),
        ("(2,1)", "(1,2)"),  # tuples are ordered
        ("\\frac{1}{3}", "0.33"),
        ("2x", "2"),
        ("", "0"),
        ("5", ""),
        ("C", "D"),
        ("1000", "100"),
    ],
)
def test_different_answers(pred: str, gold: str) -> None:
    assert not is_equivalent(pred, gold)


# --- real benchmark answers, each format --------------------------------------------------------


def test_math500_solutions_match_their_answer_field(grader: Grader) -> None:
    rows = [json.loads(line) for line in (BENCHMARKS / "math500" / "test.jsonl").open()]
    grades = grader.grade_many([(row["solution"], row["answer"]) for row in rows])
    assert all(g.correct for g in grades), [g.extracted for g in grades if not g.correct]


def test_gsm8k_reference_solutions_are_right_and_off_by_one_is_wrong(grader: Grader) -> None:
    rows = [json.loads(line) for line in (BENCHMARKS / "gsm8k" / "test.jsonl").open()][:100]
    problems = read_benchmark_file("gsm8k", BENCHMARKS / "gsm8k" / "test.jsonl")[:100]
    # The raw solution ends in "#### n": the harness's last-number rule finds n.
    right = grader.grade_many([(r["answer"], p.gold) for r, p in zip(rows, problems, strict=True)])
    wrong = grader.grade_many([(f"\\boxed{{{int(p.gold) + 1}}}", p.gold) for p in problems])
    assert all(g.correct for g in right)
    assert not any(g.correct for g in wrong)


@pytest.mark.parametrize("name", ["aime24", "amc23", "svamp"])
def test_numeric_benchmarks_accept_the_answer_as_a_model_writes_it(
    grader: Grader, name: str
) -> None:
    raw = [json.loads(line) for line in (BENCHMARKS / name / "test.jsonl").open()][:60]
    field = "Answer" if name == "svamp" else "answer"
    written = [f"{float(r[field]):.12g}" for r in raw]  # "025" -> "25", 27.0 -> "27"
    grades = grader.grade_many(
        [
            (f"So the answer is $\\boxed{{{w}}}$.", str(r[field]))
            for w, r in zip(written, raw, strict=True)
        ]
    )
    assert all(g.correct for g in grades)


def test_gaokao_latex_answers_match_themselves_in_a_box(grader: Grader) -> None:
    file = BENCHMARKS / "gaokao2023en" / "test.jsonl"
    problems = [p for p in read_benchmark_file("gaokao2023en", file) if p.gold]
    grades = grader.grade_many([(f"Hence \\boxed{{{p.gold}}}.", f"${p.gold}$") for p in problems])
    assert all(g.correct for g in grades), [g.extracted for g in grades if not g.correct]


def test_aime_solutions_with_font_commands_are_graded(grader: Grader) -> None:
    problems = read_benchmark_file("aime24", BENCHMARKS / "aime24" / "test.jsonl")
    grade = grader.grade("so $d = \\boxed{\\textbf{(073)}}.$", problems[0].gold.zfill(3))
    assert grade.extracted == "\\textbf{(073)}"
    assert grader.grade("so $d = \\boxed{\\textbf{(073)}}.$", "073").correct


# --- time limit and bad input -----------------------------------------------------------------


def test_a_pathological_answer_is_killed_at_the_hard_limit_and_the_pool_goes_on() -> None:
    # 0.3 s is below math-verify's own 1 s alarm, so only the parent's kill can end the item.
    with Grader(timeout_s=0.3, workers=1) as pool:
        grades = pool.grade_many(
            [
                ("\\boxed{10^{10^{10^{10}}}}", "5"),
                ("\\boxed{\\frac{3}{4}}", "0.75"),
            ]
        )
    assert grades[0] == Grade("10^{10^{10^{10}}}", False, grades[0].seconds, "timeout")
    assert grades[1].correct and not grades[1].error


def test_a_dead_worker_is_replaced(grader: Grader) -> None:
    for worker in grader._workers:  # as the OOM killer would
        worker.process.kill()
        worker.process.join()
    grades = grader.grade_many([("\\boxed{7}", "7"), ("\\boxed{8}", "8"), ("\\boxed{9}", "9")])
    assert all(g.correct for g in grades)


def test_bad_inputs_give_a_grade_not_a_crash(grader: Grader) -> None:
    binary = bytes(range(256)).decode("latin-1") * 100
    items = [
        ("", "1"),
        ("\\boxed{}", "1"),
        ("x" * 2_000_000 + " \\boxed{42}", "42"),  # huge
        (binary + "\\boxed{\x00\xff}", "1"),  # binary
        ("\\boxed{" + "{" * 20_000 + "1" + "}" * 20_000 + "}", "1"),  # deeply nested braces
        ("\\boxed{" + "{" * 20_000, "1"),  # unbalanced
        ("\\boxed{\\frac{\\frac{\\frac{}{}}{}}{}}", "1"),
        ("\\boxed{12}", "12"),  # the pool still works
    ]
    grades = grader.grade_many(items)
    assert len(grades) == len(items)
    assert [g.correct for g in grades] == [False, False, True, False, False, False, False, True]


# --- model output is never executed -----------------------------------------------------------

PAYLOADS = [
    "__import__('os').system('touch MARKER')",
    "exec(\"open('MARKER', 'w')\")",
    "eval(compile('open(\"MARKER\", \"w\")', 's', 'exec'))",
    "\\text{__import__('os').system('touch MARKER')}",
    "lambda: open('MARKER', 'w')",
    "1+__import__('pathlib').Path('MARKER').touch()",
]


def test_grading_never_executes_model_output(tmp_path: Path, grader: Grader) -> None:
    marker = tmp_path / "executed"
    answers = [p.replace("MARKER", str(marker)) for p in PAYLOADS]
    compiled: list[str] = []

    def audit(event: str, args: tuple) -> None:
        # sympy compiles its own fixed snippets ("Integer (3 )"); model text must never appear.
        if event in ("compile", "exec") and args and isinstance(args[0], bytes | str):
            compiled.append(str(args[0]))
        if event in ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn"):
            compiled.append(f"{event} {args}")

    sys.addaudithook(audit)
    for answer in answers:
        for text in (answer, f"The answer is \\boxed{{{answer}}}"):
            assert not is_equivalent(extract_answer(text), "3")
    grades = grader.grade_many([(f"\\boxed{{{a}}}", "3") for a in answers])
    assert not any(g.correct for g in grades)
    assert not marker.exists()
    assert not [src for src in compiled if "__import__" in src or "open" in src or "lambda" in src]


# --- verdicts ---------------------------------------------------------------------------------

LONG_COT = (
    "First I compute 2 + 2 = 5. Wait, let me verify this step: that is a mistake, "
    "2 + 2 = 4. Checking backward, 4 - 2 = 2, so the result is \\boxed{4}."
)


def _dialogue(
    phase: int, turns: list[list[str]], finishes: list[list[str]] | None = None
) -> Dialogue:
    samples = [
        Generation(
            sample_id=f"j-{i}",
            turns=t,
            tokens=[10] * len(t),
            finish_reasons=finishes[i] if finishes else [],
            seed=i,
        )
        for i, t in enumerate(turns)
    ]
    return Dialogue(
        run_id="r",
        problem_id="p",
        job_id="j",
        phase=phase,
        gold="4",
        dataset="t",
        model="m",
        prompt_version="v1",
        params=SamplingParams(),
        samples=samples,
    )


def test_phase1_dialogues_get_the_four_categories(grader: Grader) -> None:
    right, wrong = "so \\boxed{4}", "so \\boxed{5}"
    msg = _dialogue(
        1,
        [
            [right, "review", LONG_COT],
            [right, "review", wrong],
            [wrong, "review", LONG_COT],
            [wrong, "review", wrong],
        ],
    )
    out = verify_dialogue(msg, grader, VerifierSettings(min_tokens=1))
    assert [v.category for v in out.verdicts] == ["RR", "RW", "WR", "WW"]
    assert [v.accepted for v in out.verdicts] == [True, False, True, False]
    assert out.verdicts[0].extracted == "4" and out.job_id == "j"


def test_a_first_turn_cut_before_it_stated_an_answer_is_neither_right_nor_wrong(
    grader: Grader,
) -> None:
    # Cut at its token budget, turn 1 ends on a number that is no answer (it would grade as W).
    cut = "First, 2 + 2 is computed as follows: we take 2 and add 5"
    stated_then_cut = "The answer is 5. Then, to be thorough, we add 5"
    msg = _dialogue(
        1,
        [[cut, "review", LONG_COT], [stated_then_cut, "review", LONG_COT], [cut, "r", LONG_COT]],
        [["length", "stop", "stop"], ["length", "stop", "stop"], ["stop", "stop", "stop"]],
    )
    out = verify_dialogue(msg, grader, VerifierSettings(min_tokens=1))
    assert [v.category for v in out.verdicts] == ["?R", "WR", "WR"]
    assert [v.initial_correct for v in out.verdicts] == [None, False, False]
    assert out.verdicts[0].accepted  # its final answer is right; the balance keeps it out


def test_phase2_samples_are_right_or_wrong_and_rules_can_reject(grader: Grader) -> None:
    msg = _dialogue(2, [["plain \\boxed{4}"], ["\\boxed{3}"], ["the answer is 4"]])
    out = verify_dialogue(msg, grader, VerifierSettings(min_tokens=1))
    assert [v.category for v in out.verdicts] == ["R", "W", "R"]
    assert out.verdicts[0].accepted and out.verdicts[0].initial_correct is None
    # Right answer, but not in a box: graded right, rejected by the rule.
    assert out.verdicts[2].failed_rules == ["boxed_answer"] and not out.verdicts[2].accepted
    assert rule_tally(out, VerifierSettings())["boxed_answer"] == (2, 1)
    assert "has_checking_steps" not in rule_tally(out, VerifierSettings())


# --- the grade command ------------------------------------------------------------------------


def test_grade_command_writes_one_json_line_per_row(tmp_path: Path) -> None:
    rows = [
        {"gold": "025", "response": "\\boxed{25}", "dataset": "aime24"},
        {"gold": 27.0, "response": "The answer is 26."},
        {"gold": "\\frac12", "response": "no number"},
    ]
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["grade", str(file)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["extracted"], x["correct"]) for x in lines] == [
        ("25", True),
        ("26", False),
        ("", False),
    ]
    assert all("seconds" in x for x in lines)


def test_grade_command_names_the_bad_line_and_field(tmp_path: Path) -> None:
    file = tmp_path / "rows.jsonl"
    file.write_text('{"gold": "1", "response": "1"}\n{"gold": "2"}\n')
    result = CliRunner().invoke(app, ["grade", str(file)])
    assert result.exit_code == 2
    assert f"{file}:2: field 'response' is missing" in result.output
