"""The verifier's verdict logic: grade a dialogue's samples and run the rule filters.

Pure apart from the rule counters: no broker, no database (the service wires those around it).

- Phase 1: a sample's turns are [solve, review, long CoT]. The turn-1 answer and the final answer
  (the long CoT) are graded against the gold answer: category RR/RW/WR/WW. A turn 1 cut at its
  token budget before it stated an answer has no first try to grade: ?R or ?W, neither
  initial-right nor initial-wrong (the phase-1 balance counts it as neither).
- Phase 2: a sample is one solution: category R or W.
A sample is accepted when its final answer is right and every rule of its phase passes; the rules
reject a final turn cut at the token budget and one that states no explicit answer.
"""

from __future__ import annotations

from shared.core.messages import Dialogue, Generation, Verdict, VerifiedSamples
from shared.core.settings import VerifierSettings
from shared.method.grading import Grader
from shared.method.prompts import Prompts, load_prompts
from verifier_svc.rules import PHASE1_RULES, PHASE2_RULES, apply_rules, explicit_answer


def _letter(correct: bool) -> str:
    return "R" if correct else "W"


def _verdict(
    sample: Generation, phase: int, grades: list, settings: VerifierSettings, prompts: Prompts
) -> Verdict:
    final_text = sample.turns[-1]
    final = grades[-1]
    # Messages from before finish reasons were recorded: unknown, so not counted as truncated.
    finishes = sample.finish_reasons or ["stop"] * len(sample.turns)
    category = _letter(final.correct)
    initial_correct = None
    if phase == 1:
        first_cut = finishes[0] == "length" and not explicit_answer(sample.turns[0]).passed
        initial_correct = None if first_cut else grades[0].correct
        category = ("?" if first_cut else _letter(grades[0].correct)) + category
    checks = "\n".join(sample.turns[1:])  # the review and the rewrite: where checking shows
    echo = f"{prompts.review}\n{prompts.rewrite}"
    results = apply_rules(
        final_text, sample.tokens[-1], finishes[-1], settings, phase, checks, echo
    )
    failed = [r.rule for r in results if not r.passed]
    return Verdict(
        sample_id=sample.sample_id,
        initial_correct=initial_correct,
        final_correct=final.correct,
        category=category,
        accepted=final.correct and not failed,
        failed_rules=failed,
        extracted=final.extracted,
    )


def verify_dialogue(msg: Dialogue, grader: Grader, settings: VerifierSettings) -> VerifiedSamples:
    """Verdicts for every sample of one dialogue message (one grader call for all answers).

    Lengths come from the generator's token counts, so the verifier needs no tokenizer."""
    # Phase 1 grades turn 1 and the final turn; phase 2 grades its single turn.
    graded = [[s.turns[0], s.turns[-1]] if msg.phase == 1 else [s.turns[-1]] for s in msg.samples]
    grades = grader.grade_many([(text, msg.gold) for texts in graded for text in texts])
    per_sample = len(graded[0]) if graded else 0
    prompts = load_prompts(msg.prompt_version)
    verdicts = [
        _verdict(
            sample, msg.phase, grades[i * per_sample : (i + 1) * per_sample], settings, prompts
        )
        for i, sample in enumerate(msg.samples)
    ]
    return VerifiedSamples(
        run_id=msg.run_id,
        problem_id=msg.problem_id,
        job_id=msg.job_id,
        phase=msg.phase,
        round=msg.round,
        verdicts=verdicts,
    )


def rule_tally(verified: VerifiedSamples, settings: VerifierSettings) -> dict[str, tuple[int, int]]:
    """rule -> (passed, failed) over a message's verdicts, for the ``rule_counts`` table."""
    rules = PHASE1_RULES if verified.phase == 1 else PHASE2_RULES
    rules = [rule for rule in rules if rule not in settings.disabled_rules]
    tally = {}
    for rule in rules:
        failed = sum(rule in v.failed_rules for v in verified.verdicts)
        tally[rule] = (len(verified.verdicts) - failed, failed)
    return tally
