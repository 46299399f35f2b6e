"""Where a sample ends besides its end-of-sequence token: stop strings, and (for a small model
that states its answer and rambles on) the end of the first line that states a final answer.
Every backend cuts its texts with ``apply_stops``; the in-process decoders also stop a row early
with ``answer_line_ended``."""

from __future__ import annotations

import re
from typing import Any

from shared.core.messages import SamplingParams


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string (excluded, as OpenAI does), and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


# A complete line (its newline written) that states a final answer.
ANSWER_LINE = re.compile(r"(?i)(?:answer is|\\boxed\{)[^\n]*\n")


def cut_after_answer(text: str) -> tuple[str, bool]:
    """``text`` up to the end of its first complete line stating a final answer (newline
    excluded), and whether it was cut there."""
    match = ANSWER_LINE.search(text)
    return (text[: match.end() - 1], True) if match else (text, False)


def apply_stops(text: str, params: SamplingParams) -> tuple[str, bool]:
    """``text`` cut at the stop strings and, if asked, after the answer line; whether it was."""
    text, stopped = cut_at_stop(text, params.stop)
    if params.stop_after_answer:
        text, answered = cut_after_answer(text)
        stopped = stopped or answered
    return text, stopped


def answer_line_ended(tokenizer: Any, ids: list[int]) -> bool:
    """Whether the last token of the generated ``ids`` ends a line stating the final answer
    (decoding the whole text only when that token holds a newline)."""
    return (
        "\n" in tokenizer.decode(ids[-1:]) and ANSWER_LINE.search(tokenizer.decode(ids)) is not None
    )
