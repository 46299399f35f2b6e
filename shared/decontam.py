"""Decontamination: drop training problems that share a long word n-gram with a benchmark problem.

Texts are compared as lower-cased word sequences (letters and digits only), so LaTeX spacing and
punctuation do not hide a copy. A text shorter than n words counts as one n-gram of itself, so a
short benchmark problem copied word for word is caught as well.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def benchmark_questions(folder: Path) -> list[tuple[str, str]]:
    """(benchmark:row, question) of every ``<name>/*.jsonl`` file in the benchmark folder."""
    files = sorted(Path(folder).glob("*/*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no benchmark files <name>/*.jsonl under {folder}")
    out = []
    for path in files:
        with path.open() as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    out.append((f"{path.parent.name}:{line_no}", _question(path, line_no, line)))
    return out


def _question(path: Path, line_no: int, line: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{line_no}: not JSON: {exc}") from None
    if "Body" in row and "Question" in row:  # SVAMP
        return f"{row['Body']} {row['Question']}"
    for field in ("question", "problem"):
        if isinstance(row.get(field), str):
            return row[field]
    raise ValueError(f"{path}:{line_no}: no 'question', 'problem' or 'Body'+'Question' field")


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
