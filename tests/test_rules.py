"""Rule filters: each rule passes a good long CoT and fails the defect it exists for, with a
reason; apply_rules counts every outcome in the Prometheus counter."""

from __future__ import annotations

from prometheus_client import REGISTRY

from shared.core.settings import VerifierSettings
from shared.method.prompts import load_prompts
from verifier_svc.rules import (
    apply_rules,
    boxed_answer,
    explicit_answer,
    has_checking_steps,
    length,
    no_language_mixing,
    no_repetition,
    not_truncated,
)

GOOD = (
    "We need the sum of the roots of x^2 - 5x + 6 = 0. Factoring gives (x - 2)(x - 3), so the "
    "roots are 2 and 3 and the sum is 6. Wait, let me verify by Vieta: the sum is -b/a = 5, so "
    "I made a mistake adding. Checking again: 2 + 3 = 5. Substituting x = 2 and x = 3 back gives "
    "0 both times. The answer is \\boxed{5}."
)


def test_a_good_long_cot_passes_every_rule() -> None:
    results = apply_rules(GOOD, 80, "stop", VerifierSettings(), phase=1, checks=GOOD)
    assert [r.rule for r in results if not r.passed] == []
    assert len(results) == 7


def test_boxed_answer_rule() -> None:
    assert boxed_answer("so \\boxed{\\frac{1}{2}}").passed
    assert boxed_answer("the answer is 5").reason == "no \\boxed{} final answer"
    assert boxed_answer("so \\boxed{ }").reason == "the last \\boxed{} is empty"


def test_length_rule_has_both_bounds() -> None:
    assert length(100, 16, 4096).passed
    assert length(3, 16, 4096).reason == "3 tokens < 16"
    assert length(5000, 16, 4096).reason == "5000 tokens > 4096"


def test_repetition_rule_catches_loops_of_words_and_of_lines() -> None:
    assert no_repetition(GOOD, 8, 6).passed
    loop = GOOD + " So the answer is 5 and we are done here." * 20
    result = no_repetition(loop, 8, 6)
    assert not result.passed and "repeated" in result.reason
    digits = GOOD + "\n" + "\n".join(["1111111111111111"] * 10)
    assert not no_repetition(digits, 8, 6).passed


def test_language_mixing_rule_allows_greek_math_but_not_cjk() -> None:
    assert no_language_mixing(GOOD + " with angle θ and π radians, α + β.", 0.01).passed
    mixed = GOOD + " 所以答案是五，我们已经验证过了。"
    result = no_language_mixing(mixed, 0.01)
    assert not result.passed and "non-Latin letters" in result.reason


def test_checking_rule_needs_review_language() -> None:
    assert has_checking_steps(GOOD, 2).passed
    plain = "Factoring gives (x - 2)(x - 3), so the sum of the roots is 5. \\boxed{5}"
    assert has_checking_steps(plain, 2).reason == "0 checking/correction phrases < 2"


def test_an_echo_of_the_review_prompt_passes_no_checking_rule() -> None:
    prompts = load_prompts("v1")
    instructions = f"{prompts.review}\n{prompts.rewrite}"
    # The model copies the review instructions and checks nothing itself.
    echo = (
        "Verify each step: recompute every calculation and check that each step follows from "
        "the previous one. If you find an error, backtrack to the step where it happened and "
        "redo the work from there. Reason backward: start from your answer and check that it "
        "satisfies every condition of the problem. The answer is \\boxed{6}."
    )
    assert has_checking_steps(echo, 2).passed  # counted on the raw text, the echo passes
    assert has_checking_steps(echo, 2, instructions).reason == ("0 checking/correction phrases < 2")
    assert has_checking_steps(GOOD, 2, instructions).passed  # its own checks still count


def test_phase2_skips_the_checking_rule_and_outcomes_are_counted() -> None:
    def count(rule: str, result: str) -> float:
        value = REGISTRY.get_sample_value(
            "dualphase_rule_results_total", {"rule": rule, "result": result}
        )
        return value or 0.0

    before = count("boxed_answer", "fail"), count("length", "pass")
    results = apply_rules("plain 5", 20, "stop", VerifierSettings(), phase=2)
    assert "has_checking_steps" not in [r.rule for r in results]
    assert count("boxed_answer", "fail") == before[0] + 1
    assert count("length", "pass") == before[1] + 1


def test_disabled_rules_are_not_applied() -> None:
    unboxed = GOOD.replace("\\boxed{5}", "5")
    settings = VerifierSettings(disabled_rules=["boxed_answer"])
    results = apply_rules(unboxed, 80, "stop", settings, phase=1, checks=unboxed)
    assert "boxed_answer" not in [r.rule for r in results]
    assert all(r.passed for r in results)
    default = apply_rules(unboxed, 80, "stop", VerifierSettings(), phase=1, checks=unboxed)
    assert [r.rule for r in default if not r.passed] == ["boxed_answer"]


def test_a_sample_cut_at_the_token_limit_is_rejected_by_name() -> None:
    results = apply_rules(GOOD, 80, "length", VerifierSettings(), phase=2)
    failed = {r.rule: r.reason for r in results if not r.passed}
    assert failed == {"not_truncated": "cut at the token budget"}
    assert not_truncated("stop").passed


def test_training_needs_an_explicit_answer_not_a_last_number() -> None:
    assert explicit_answer("3 + 4 = 7, so \\boxed{7}").passed
    assert explicit_answer("Adding them, the answer is 7.").passed
    assert explicit_answer("So the final answer is: 7").passed
    echo = "Tom has 3 apples and gets 4 more. 3 + 4 = 7"  # a last number, no stated answer
    assert explicit_answer(echo).reason == "no \\boxed{} and no 'the answer is' phrase"
    settings = VerifierSettings(disabled_rules=["boxed_answer"])
    failed = [r.rule for r in apply_rules(echo, 20, "stop", settings, phase=2) if not r.passed]
    assert failed == ["explicit_answer"]
    settings = VerifierSettings(disabled_rules=["boxed_answer", "explicit_answer"])
    assert all(r.passed for r in apply_rules(echo, 20, "stop", settings, phase=2))
