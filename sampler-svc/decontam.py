"""Decontamination: drop training problems that share a long word n-gram with a benchmark problem.

Texts are compared as lower-cased word sequences (letters and digits only), so LaTeX spacing and
punctuation do not hide a copy. A text shorter than n words counts as one n-gram of itself, so a
short benchmark problem copied word for word is caught as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.datasets import FORMATS, detect
from shared.datasets.jsonl import DatasetFormatError, read_jsonl
from shared.datasets.problems import plain_question

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def benchmark_questions(folder: Path) -> list[tuple[str, str]]:
    """(benchmark:row, question) of every ``<name>/*.jsonl`` file in the benchmark folder, each
    row read by its format's module (the folder name), or as a plain question row."""
    files = sorted(Path(folder).glob("*/*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no benchmark files <name>/*.jsonl under {folder}")
    out = []
    for path in files:
        for line_no, row in read_jsonl(path):
            try:
                question = _question(path.parent.name, row, line_no - 1)
            except (DatasetFormatError, ValueError, TypeError) as exc:
                raise DatasetFormatError(f"{path}:{line_no}: {exc}") from None
            out.append((f"{path.parent.name}:{line_no}", question))
    return out


def _question(name: str, row: dict[str, Any], index: int) -> str:
    name = name if name in FORMATS else detect(row)
    return FORMATS[name](row, index).question if name in FORMATS else plain_question(row)


class Decontaminator:
    """Finds the benchmark problem a text shares an n-gram with."""

    def __init__(self, benchmark: Iterable[tuple[str, str]], n: int) -> None:
        self.n = n
        self.index: dict[tuple[str, ...], str] = {}
        for name, question in benchmark:
            for gram in ngrams(question, n):
                self.index.setdefault(gram, name)

    @classmethod
    def from_folder(cls, folder: Path, n: int) -> Decontaminator:
        return cls(benchmark_questions(folder), n)

    def match(self, text: str) -> str | None:
        """The benchmark row (``name:line``) sharing an n-gram with ``text``, or None."""
        return next((self.index[g] for g in ngrams(text, self.n) if g in self.index), None)
