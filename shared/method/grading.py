"""Grading: pull the final answer out of a response and decide whether it equals the gold answer.

- ``extract_answer`` follows the Qwen2.5-Math evaluation harness: the last ``\\boxed{}`` (braces
  matched), else the text after "the answer is", else the last number.
- ``is_equivalent`` compares two answer strings: cheap string and number checks first, then
  math-verify (LaTeX parsed into sympy). It never evaluates the text as code: math-verify is used
  with LaTeX extraction only (its plain-expression extractor hands text to sympy's ``parse_expr``).
- ``Grader`` runs ``is_equivalent`` in worker processes with a hard per-item time limit. sympy can
  spin forever on answers such as ``10^{10^{10^{10}}}`` and math-verify's own timeout is a SIGALRM,
  which only works in a main thread; so a worker that overruns is killed and replaced.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import re
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection, wait

from math_verify import LatexExtractionConfig, parse, verify

from shared.datasets.rows import last_boxed

_LATEX_ONLY = [LatexExtractionConfig(boxed_match_priority=0)]
_NUMBER = re.compile(r"-?\d*\.?\d+")
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_NUMBER_WITH_WORDS = re.compile(r"\$?(-?[\d,]*\.?\d+)\s+[A-Za-z][A-Za-z\s]*\.?")  # 18 dollars
_SET_BUILDER = re.compile(r"^\\\{\s*[a-zA-Z]\s*(?:\||\\mid|:)\s*(.+)\\\}$")
_SPACES = re.compile(r"\s+")
_SPACING = re.compile(r"(\\\\)|\\[!, ]")  # a row break \\ is one token, never "\" + "\ "
_WRAPPED = re.compile(r"^\\(?:text|textbf|mathbf|mathrm|boxed)\{(.*)\}$")


def extract_answer(text: str) -> str:
    """The final answer of a response, Qwen2.5-Math harness style; "" if there is none."""
    boxed = last_boxed(text)
    if boxed is not None:
        answer = boxed
    elif "he answer is" in text:
        # The harness keeps the whole tail; the rest of the line is what a model means by it.
        answer = text.rsplit("he answer is", 1)[1].strip().split("\n")[0]
    elif "final answer is" in text:
        answer = text.rsplit("final answer is", 1)[1].strip().split("\n")[0]
    else:
        numbers = _NUMBER.findall(text.replace(",", ""))
        answer = numbers[-1] if numbers else ""
    answer = re.sub(r"\n\s*", "", answer).strip()
    answer = answer.removeprefix(":").removesuffix(".").removesuffix("/").strip()
    if answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer


def _normalize(answer: str) -> str:
    """Light clean-up so that the cheap checks hit often; math-verify does the real work."""
    s = answer.strip().strip("$").strip().removesuffix(".")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac")
    s = s.replace("\\tfrac", "\\frac").replace("\\lbrace", "\\{").replace("\\rbrace", "\\}")
    s = _SPACING.sub(r"\1", s)  # drops \, \! and "\ " but keeps the row break \\ of a matrix
    s = s.replace("\\$", "").replace("^\\circ", "").replace("^{\\circ}", "")
    wrapped = _WRAPPED.match(s)  # \textbf{(073)}: the whole answer in a font command
    if wrapped and last_boxed("boxed{" + wrapped.group(1) + "}") == wrapped.group(1):
        s = wrapped.group(1).strip()
    if s.startswith("(") and s.endswith(")") and _as_number(s[1:-1]):
        s = s[1:-1]  # (073): a choice-style number
    match = _SET_BUILDER.match(s)
    if match:  # {x | -2 <= x < 1}: math-verify reads the condition, not the set-builder braces
        s = match.group(1)
    return s.strip()


def _as_number(s: str) -> tuple[float, bool] | None:
    """(value, is_percent) if ``s`` is a plain number such as 1,625 or 5.3\\%; else None."""
    percent = s.endswith("%")
    s = s.removesuffix("%").removesuffix("\\")
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    return float(s.replace(",", "")), percent


def _numbers_equal(pred: tuple[float, bool], gold: tuple[float, bool]) -> bool:
    (p, p_pct), (g, g_pct) = pred, gold
    # With a percent sign on either side, 5.3%, 5.3 and 0.053 are the same answer (harness rule).
    scales = [(1, 1), (100, 1), (1, 100)] if p_pct or g_pct else [(1, 1)]
    return any(math.isclose(p * a, g * b, rel_tol=1e-6, abs_tol=1e-9) for a, b in scales)


@lru_cache(maxsize=4096)
def _parse(answer: str, timeout_s: int) -> list:
    # Wrapping in \boxed{} lets bare LaTeX such as 3\sqrt{2} or (1,2) parse as one expression.
    return parse("\\boxed{" + answer + "}", _LATEX_ONLY, parsing_timeout=timeout_s)


def is_equivalent(pred: str, gold: str, timeout_s: int = 0) -> bool:
    """Whether the answer ``pred`` equals ``gold``. In-process; ``timeout_s`` > 0 turns on
    math-verify's SIGALRM timeout (main thread only), 0 means no time limit."""
    p, g = _normalize(pred), _normalize(gold)
    if not p or not g:
        return False
    # Spaces are ignored here but kept for the LaTeX parser, where "\\cdot x" needs them.
    p_tight, g_tight = _SPACES.sub("", p), _SPACES.sub("", g)
    if p_tight == g_tight:
        return True
    words = _NUMBER_WITH_WORDS.fullmatch(pred.strip())
    p_num = _as_number(words.group(1) if words else p_tight)
    g_num = _as_number(g_tight)
    if p_num and g_num:
        return _numbers_equal(p_num, g_num)
    timeout = timeout_s or None
    golds = [g, g.removesuffix("\\%").removesuffix("%")] if g.endswith("%") else [g]
    pred_parsed = _parse(p, timeout)
    return any(
        verify(
            _parse(gi, timeout), pred_parsed, allow_set_relation_comp=True, timeout_seconds=timeout
        )
        for gi in golds
    )


@dataclass(frozen=True)
class Grade:
    """The verdict on one response."""

    extracted: str
    correct: bool
    seconds: float
    error: str = ""  # "timeout" or "worker died: ..." or the exception raised while comparing


def _worker_main(conn: Connection, inner_timeout_s: int) -> None:
    """Worker loop: (pred, gold) in, (correct, error) out, until the pipe closes."""
    # math-verify logs every timeout with the whole (possibly huge) answer; our Grade says it.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    is_equivalent("\\frac{1}{2}", "0.5", inner_timeout_s)  # builds the LaTeX parser
    conn.send("ready")
    while True:
        try:
            pred, gold = conn.recv()
        except EOFError:
            return
        try:
            conn.send((is_equivalent(pred, gold, inner_timeout_s), ""))
        except Exception as exc:  # a parser bug must cost one item, not the worker
            conn.send((False, f"{type(exc).__name__}: {exc}"[:200]))


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, inner_timeout_s: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, inner_timeout_s), daemon=True)
        self.process.start()
        child.close()
        self.conn.recv()  # "ready": its first item is not charged for start-up

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class Grader:
    """A pool of grading processes with a hard per-item time limit.

    Each worker grades one item at a time; the parent waits with a deadline and kills and
    replaces a worker that overruns or dies. Not thread-safe: use one Grader per thread.
    """

    def __init__(self, timeout_s: float = 5.0, workers: int = 1) -> None:
        self.timeout_s = timeout_s
        # math-verify's SIGALRM timeout inside the worker is the first line (the item fails
        # cleanly, the worker lives); the parent's kill is the hard limit.
        self._inner_timeout_s = max(1, math.floor(timeout_s / 2))
        # forkserver: a new worker is a fork of a clean process that has math-verify imported,
        # so replacing a killed one is fast and never forks the parent's threads.
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["shared.method.grading"])
        self._workers = [_Worker(self._ctx, self._inner_timeout_s) for _ in range(workers)]

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._workers:
            worker.kill()
        self._workers = []

    def grade(self, response: str, gold: str) -> Grade:
        return self.grade_many([(response, gold)])[0]

    def grade_many(self, items: list[tuple[str, str]]) -> list[Grade]:
        """Grade (response, gold) pairs; the result keeps their order."""
        extracted = [extract_answer(response) for response, _ in items]
        grades: list[Grade | None] = [
            None if answer else Grade("", False, 0.0) for answer in extracted
        ]
        pending = deque(i for i, grade in enumerate(grades) if grade is None)
        idle = list(self._workers)
        busy: dict[Connection, tuple[_Worker, int, float]] = {}  # conn -> worker, item, start
        while pending or busy:
            while pending and idle:
                worker, i = idle.pop(), pending.popleft()
                try:
                    worker.conn.send((extracted[i], items[i][1]))
                except OSError:  # the worker died between items (e.g. the OOM killer)
                    worker = self._replace(worker)
                    worker.conn.send((extracted[i], items[i][1]))
                busy[worker.conn] = (worker, i, time.monotonic())
            first_deadline = min(start for _, _, start in busy.values()) + self.timeout_s
            for conn in wait(list(busy), timeout=max(0.0, first_deadline - time.monotonic())):
                worker, i, start = busy.pop(conn)
                try:
                    correct, error = conn.recv()
                except (EOFError, OSError):  # crashed (segfault, out of memory)
                    worker.process.join()
                    correct, error = False, f"worker died: exit {worker.process.exitcode}"
                    worker = self._replace(worker)
                grades[i] = Grade(extracted[i], correct, time.monotonic() - start, error)
                idle.append(worker)
            now = time.monotonic()
            for conn, (worker, i, start) in list(busy.items()):
                if now - start >= self.timeout_s:
                    del busy[conn]
                    grades[i] = Grade(extracted[i], False, now - start, "timeout")
                    idle.append(self._replace(worker))
        return grades  # type: ignore[return-value]  # every slot is filled by now

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self._ctx, self._inner_timeout_s)
        self._workers[self._workers.index(worker)] = fresh
        return fresh
