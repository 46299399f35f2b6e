"""Datasets: the benchmark files, the training pool and problem files, one module per format.

Files are JSON Lines in the layout of the Qwen2.5-Math evaluation harness
(``<datasets_dir>/<name>/test.jsonl``), read by the one reader in ``jsonl`` (errors name the
file, the line and the field). Each format module (``gsm8k``, ``math500``, ``aime24``, ``amc23``,
``svamp``, ``gaokao2023en``, ``tabmwp``, and ``math`` for the training pool) turns a row into a
``BenchmarkProblem``; the evaluator, the problem files of a run (``problems``) and the sampler's
decontamination all read rows through them. ``load_benchmark`` also reads any other local file or
folder, and a dataset hub id through ``datasets.load_dataset`` when the machine is online.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shared.core.settings import EvalSettings
from shared.datasets import aime24, amc23, gaokao2023en, gsm8k, math, math500, svamp, tabmwp
from shared.datasets.jsonl import DatasetFormatError, read_jsonl
from shared.datasets.rows import BenchmarkProblem

Parser = Callable[[dict[str, Any], int], BenchmarkProblem]
FORMATS: dict[str, Parser] = {
    "gsm8k": gsm8k.parse,
    "math500": math500.parse,
    "aime24": aime24.parse,
    "amc23": amc23.parse,
    "svamp": svamp.parse,
    "gaokao2023en": gaokao2023en.parse,
    "tabmwp": tabmwp.parse,
}


def detect(row: dict[str, Any]) -> str | None:
    """The format of a row by the fields only it has, or None for a plain question/answer row.
    (MATH500, AIME, AMC and Gaokao rows read the same as a plain row, but for number formats.)"""
    if isinstance(row.get("dataset"), str) and row["dataset"] in {*FORMATS, "math"}:
        return row["dataset"]
    if "Body" in row and "Question" in row:
        return "svamp"
    if "table" in row and "ans_type" in row:
        return "tabmwp"
    if "####" in str(row.get("answer", "")):
        return "gsm8k"
    if "solution" in row and not row.get("answer"):
        return "math"
    return None


def parse_row(name: str, row: dict[str, Any], index: int) -> BenchmarkProblem:
    """A row of format ``name`` (a key of FORMATS, or ``math``)."""
    return math.parse(row, index) if name == "math" else FORMATS[name](row, index)


def _rows(name: str, path: str | Path | None) -> Iterable[tuple[str, int, dict[str, Any]]]:
    """(where, line, row) from a local file or folder, or from the hub."""
    local = Path(path) if path is not None else EvalSettings().datasets_dir / name
    if local.is_dir():
        nested = local / name / "test.jsonl"
        local = nested if nested.is_file() else local / "test.jsonl"
    if local.is_file():
        for lineno, row in read_jsonl(local):
            yield str(local), lineno, row
    elif path is not None and not Path(path).exists():
        from datasets import load_dataset  # heavy import, and only online users need it

        for index, row in enumerate(load_dataset(str(path), split="test")):
            yield str(path), index + 1, dict(row)
    else:
        raise FileNotFoundError(f"{name}: no test.jsonl at {local}")


def load_benchmark(
    name: str,
    path: str | Path | None = None,
    limit: int = 0,
    levels: tuple[int, ...] = (1, 2, 3, 4, 5),
) -> list[BenchmarkProblem]:
    """Problems of benchmark ``name`` from ``path`` (file, folder or hub id; default: the
    configured datasets_dir), at most ``limit`` of them (0 = all); ``levels`` of ``synthetic``."""
    if name == "synthetic":
        return held_out_synthetic(limit or SYNTHETIC_SIZE, levels)
    if name not in FORMATS:
        raise ValueError(f"unknown benchmark {name!r}; known: synthetic, {', '.join(FORMATS)}")
    problems = []
    for where, lineno, row in _rows(name, path):
        try:
            problems.append(FORMATS[name](row, lineno - 1))
        except (DatasetFormatError, ValueError, TypeError) as exc:
            raise DatasetFormatError(f"{where}:{lineno}: {name}: {exc}") from exc
        if limit and len(problems) >= limit:
            break
    return problems


# The held-out synthetic set: drawn with a seed no run uses for its training problems (runs draw
# theirs with the run seed, small integers), so it measures the demo model on unseen problems.
SYNTHETIC_SEED = 1_000_003
SYNTHETIC_SIZE = 200


def held_out_synthetic(
    count: int, levels: tuple[int, ...] = (1, 2, 3, 4, 5)
) -> list[BenchmarkProblem]:
    from shared.datasets.synthetic import make_problems

    return [
        BenchmarkProblem(id=p.id, question=p.question, gold=str(p.answer), dataset="synthetic")
        for p in make_problems(count, seed=SYNTHETIC_SEED, levels=levels)
    ]


def _key(text: str) -> str:
    return " ".join(text.split())


def default_training_pool() -> Path:
    return EvalSettings().datasets_dir.parent / "train" / "math_test_full.jsonl"


def load_training_pool(
    path: str | Path | None = None, exclude: Iterable[str] | None = None, limit: int = 0
) -> list[BenchmarkProblem]:
    """The MATH training pool (format ``math``: gold = the last ``\\boxed{}`` of ``solution``).

    ``exclude`` holds problem texts that must not leak into training (matched with whitespace
    collapsed); None means the MATH500 benchmark problems.
    """
    path = Path(path) if path is not None else default_training_pool()
    if exclude is None:
        exclude = [p.question for p in load_benchmark("math500")]
    excluded = {_key(text) for text in exclude}
    problems = []
    for lineno, row in read_jsonl(path):
        try:
            problem = math.parse(row, lineno - 1)
        except DatasetFormatError as exc:
            raise DatasetFormatError(f"{path}:{lineno}: math: {exc}") from exc
        if _key(problem.question) in excluded:
            continue
        problems.append(problem)
        if limit and len(problems) >= limit:
            break
    return problems
