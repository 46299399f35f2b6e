"""Decontamination: drop training problems that share a long word n-gram with a benchmark problem.

Texts are compared as lower-cased word sequences (letters and digits only), so LaTeX spacing and
punctuation do not hide a copy. A text shorter than n words counts as one n-gram of itself, so a
short benchmark problem copied word for word is caught as well. The benchmark problems are those
the run evaluates (``eval.benchmarks``, ``synthetic`` included), each benchmark whole, loaded by
the evaluator's loader (``shared.datasets.load_benchmarks``): a benchmark that cannot be loaded
stops the check with an error naming its dataset id and the setting for a local copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from shared.datasets import BenchmarkProblem

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class Decontaminator:
    """Finds the benchmark problem a text shares an n-gram with."""

    def __init__(self, benchmark: Iterable[tuple[str, str]], n: int) -> None:
        self.n = n
        self.index: dict[tuple[str, ...], str] = {}
        for name, question in benchmark:
            for gram in ngrams(question, n):
                self.index.setdefault(gram, name)

    @classmethod
    def from_benchmarks(
        cls, benchmarks: dict[str, list[BenchmarkProblem]], n: int
    ) -> Decontaminator:
        """Over the problems of each benchmark (``shared.datasets.load_benchmarks``)."""
        return cls(
            ((f"{name}:{p.id}", p.question) for name, ps in benchmarks.items() for p in ps), n
        )

    def match(self, text: str) -> str | None:
        """The benchmark problem (``name:id``) sharing an n-gram with ``text``, or None."""
        return next((self.index[g] for g in ngrams(text, self.n) if g in self.index), None)
