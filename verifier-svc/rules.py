"""Rule filters for generated solutions: each rule is a small named function with a reason.

A rule returns a ``RuleResult``; ``apply_rules`` runs the rules that fit a phase and counts each
outcome in ``dualphase_rule_results_total{rule,result}``.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from dataclasses import dataclass

from prometheus_client import Counter

from shared.core.settings import VerifierSettings
from shared.datasets.rows import last_boxed

RULE_RESULTS = Counter(
    "dualphase_rule_results_total", "Rule filter outcomes per rule.", ["rule", "result"]
)

# Review language of a long CoT: verification, backtracking, correction, backward reasoning.
_CHECKING = re.compile(
    r"verif|\bcheck|double-check|\bwait\b|mistake|\berror|re-?examin|re-?evaluat|reconsider|"
    r"backward|substitut|plug(?:ging)? (?:it |this |\w+ )?back|\bcorrect(?:ion|ing|ed)\b|"
    r"let me re|\bwrong\b|\bconfirm",
    re.IGNORECASE,
)
_WORD = re.compile(r"\S+")
# The answer phrases the grader's extraction also reads (shared.method.grading.extract_answer).
_ANSWER_PHRASE = re.compile(r"(?:the|final) answer is\s*:?\s*\S", re.IGNORECASE)


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    reason: str = ""


def not_truncated(finish_reason: str) -> RuleResult:
    """The solution ended on its own: one cut at the token budget is not a solution, whatever
    number it last wrote."""
    if finish_reason == "length":
        return RuleResult("not_truncated", False, "cut at the token budget")
    return RuleResult("not_truncated", True)


def explicit_answer(text: str) -> RuleResult:
    """The final answer is stated, as ``\\boxed{}`` or an answer phrase ("the answer is ...").

    Evaluation keeps the harness's last-number fallback (parity with the Qwen2.5-Math harness);
    training does not, since a last number is often an echo of the question, not an answer.
    Disabling this rule turns the fallback on for training acceptance."""
    if last_boxed(text) or _ANSWER_PHRASE.search(text):
        return RuleResult("explicit_answer", True)
    return RuleResult("explicit_answer", False, "no \\boxed{} and no 'the answer is' phrase")


def boxed_answer(text: str) -> RuleResult:
    """The final answer is given exactly once more as a non-empty ``\\boxed{...}``."""
    answer = last_boxed(text)
    if answer is None or "\\boxed{" not in text:
        return RuleResult("boxed_answer", False, "no \\boxed{} final answer")
    if not answer.strip():
        return RuleResult("boxed_answer", False, "the last \\boxed{} is empty")
    return RuleResult("boxed_answer", True)


def length(n_tokens: int, min_tokens: int, max_tokens: int) -> RuleResult:
    """Token count within bounds: too short has no reasoning, too long is usually a loop."""
    if n_tokens < min_tokens:
        return RuleResult("length", False, f"{n_tokens} tokens < {min_tokens}")
    if n_tokens > max_tokens:
        return RuleResult("length", False, f"{n_tokens} tokens > {max_tokens}")
    return RuleResult("length", True)


def no_repetition(text: str, ngram: int, max_repeats: int) -> RuleResult:
    """No word n-gram repeated more than ``max_repeats`` times (a degenerate loop)."""
    words = _WORD.findall(text)
    grams = Tally(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
    if grams:
        gram, count = grams.most_common(1)[0]
        if count > max_repeats:
            shown = " ".join(gram)[:60]
            return RuleResult("no_repetition", False, f"'{shown}' repeated {count} times")
    # Loops without spaces (digits, CJK) escape the word n-grams: catch a repeated line too.
    lines = Tally(line.strip() for line in text.splitlines() if len(line.strip()) >= 8)
    if lines:
        line, count = lines.most_common(1)[0]
        if count > max_repeats:
            return RuleResult("no_repetition", False, f"line '{line[:60]}' repeated {count} times")
    return RuleResult("no_repetition", True)


def _is_latin_or_greek(ch: str) -> bool:
    # Latin (with accents and extensions) and Greek (math symbols such as pi, theta) are fine.
    code = ord(ch)
    return code < 0x250 or 0x370 <= code < 0x400 or 0x1E00 <= code < 0x2000


def no_language_mixing(text: str, max_foreign_share: float) -> RuleResult:
    """Letters outside the Latin and Greek scripts (CJK, Cyrillic, ...) stay under a share."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return RuleResult("no_language_mixing", True)
    foreign = sum(not _is_latin_or_greek(ch) for ch in letters)
    share = foreign / len(letters)
    if share > max_foreign_share:
        return RuleResult(
            "no_language_mixing", False, f"{share:.1%} non-Latin letters > {max_foreign_share:.1%}"
        )
    return RuleResult("no_language_mixing", True)


def own_words(text: str, prompt: str, n: int = 4) -> str:
    """The words of ``text`` outside every run of ``n`` or more words copied from ``prompt``:
    what the model wrote, not what it echoed of the instructions it was given."""
    words = _WORD.findall(text)
    keys = [_key(w) for w in words]
    prompt_keys = [_key(w) for w in _WORD.findall(prompt)]
    copied = {tuple(prompt_keys[i : i + n]) for i in range(len(prompt_keys) - n + 1)}
    echoed = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(keys[i : i + n]) in copied:
            echoed[i : i + n] = [True] * n
    return " ".join(w for w, e in zip(words, echoed, strict=True) if not e)


def _key(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def has_checking_steps(text: str, min_steps: int, prompt: str = "") -> RuleResult:
    """The dialogue really reviews itself: verification, correction or backward checks, counted
    in what the model wrote, not in what it copied of the review prompt (``prompt``)."""
    found = len(_CHECKING.findall(own_words(text, prompt)))
    if found < min_steps:
        return RuleResult(
            "has_checking_steps", False, f"{found} checking/correction phrases < {min_steps}"
        )
    return RuleResult("has_checking_steps", True)


PHASE1_RULES = (
    "not_truncated",
    "explicit_answer",
    "boxed_answer",
    "length",
    "no_repetition",
    "no_language_mixing",
    "has_checking_steps",
)
# Phase-2 samples are plain single-turn solutions: they need not show a review.
PHASE2_RULES = PHASE1_RULES[:-1]


def apply_rules(
    text: str,
    n_tokens: int,
    finish_reason: str,
    settings: VerifierSettings,
    phase: int,
    checks: str = "",
    prompt: str = "",
) -> list[RuleResult]:
    """Run the rules of ``phase`` on one solution and count each outcome. Phase 1 also looks for
    checking steps in ``checks`` (the review and the rewrite), minus what echoes ``prompt``."""
    results = [
        not_truncated(finish_reason),
        explicit_answer(text),
        boxed_answer(text),
        length(n_tokens, settings.min_tokens, settings.max_tokens),
        no_repetition(text, settings.repetition_ngram, settings.max_ngram_repeats),
        no_language_mixing(text, settings.max_foreign_share),
    ]
    if phase == 1:
        results.append(has_checking_steps(checks, settings.min_checking_steps, prompt))
    results = [r for r in results if r.rule not in settings.disabled_rules]
    for result in results:
        RULE_RESULTS.labels(result.rule, "pass" if result.passed else "fail").inc()
    return results
