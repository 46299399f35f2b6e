"""Datasets: the benchmarks, the training pools and problem files, one module per format.

Benchmarks and pools are public datasets named by hub id and pinned revision in one table
(``sources``) and read with ``datasets.load_dataset`` (``hub``): from a local copy laid out as the
hub lays it out (``data.local_dir``), from the cache (``data.cache_dir``) or from the hub. Each
format module (``gsm8k``, ``math500``, ``aime24``, ``amc23``, ``svamp``, ``gaokao2023en``,
``tabmwp``; ``math`` and ``deepscaler`` for the pools) turns a row into a ``BenchmarkProblem``;
the evaluator, the problems of a run (``problems``) and the sampler's decontamination all read
rows through them. A user's own JSON Lines file is read by the one reader in ``jsonl`` (errors
name the file, the line and the field).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.settings import DataSettings, EvalSettings, Settings
from shared.datasets import (
    aime24,
    amc23,
    deepscaler,
    gaokao2023en,
    gsm8k,
    math,
    math500,
    svamp,
    tabmwp,
)
from shared.datasets.hub import DatasetUnavailable, Located, hint, locate, materialize, read_rows
from shared.datasets.jsonl import DatasetFormatError, read_jsonl
from shared.datasets.rows import BenchmarkProblem, text_key
from shared.datasets.sources import BENCHMARKS, POOLS, Source

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
# Every format module: the benchmarks' and the pools'.
PARSERS: dict[str, Parser] = {**FORMATS, "math": math.parse, "deepscaler": deepscaler.parse}
__all__ = [
    "BENCHMARKS",
    "FORMATS",
    "PARSERS",
    "POOLS",
    "SYNTHETIC_SIZE",
    "BenchmarkProblem",
    "DatasetFormatError",
    "DatasetUnavailable",
    "Prepared",
    "Source",
    "dataset_rows",
    "detect",
    "held_out_synthetic",
    "load_benchmark",
    "load_benchmarks",
    "load_pool",
    "parse_row",
    "prepare",
    "read_benchmark_file",
]


def detect(row: dict[str, Any]) -> str | None:
    """The format of a row by the fields only it has, or None for a plain question/answer row.
    (MATH500, AIME, AMC and Gaokao rows read the same as a plain row, but for number formats.)
    A row with a ``gold`` field is a plain row whatever else it holds (no format has one; it is
    how `dualphase submit` writes the problems it draws from a pool, with their solutions)."""
    if "gold" in row:
        return None
    named = row.get("dataset")
    if isinstance(named, str) and named in {*FORMATS, "math"}:
        return named
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
    """A row of format ``name`` (a key of FORMATS, ``math`` or ``deepscaler``)."""
    return PARSERS[name](row, index)


def read_benchmark_file(name: str, path: Path) -> list[BenchmarkProblem]:
    """Every row of a JSON Lines file in the format of benchmark ``name`` (a user's own copy of a
    benchmark file); a bad line raises DatasetFormatError naming the file, the line and the field.
    """
    if name not in PARSERS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(PARSERS)}")
    problems = []
    for lineno, row in read_jsonl(Path(path)):
        try:
            problems.append(PARSERS[name](row, lineno - 1))
        except (DatasetFormatError, ValueError, TypeError) as exc:
            raise DatasetFormatError(f"{path}:{lineno}: {name}: {exc}") from exc
    return problems


# Parsed problems by (dataset, file read, its size and time): a service loads each once.
_PARSED: dict[tuple[str, str, int, int], list[BenchmarkProblem]] = {}


def _problems(source: Source, data: DataSettings) -> tuple[list[BenchmarkProblem], Located]:
    """Every problem of a dataset of the table, each row parsed by the source's format module."""
    located = locate(source, data)
    file = located.folder / source.data_file
    stat = file.stat()
    key = (source.name, str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _PARSED:
        parse = PARSERS[source.format]
        problems = []
        for index, row in enumerate(read_rows(source, data, located)):
            try:
                problems.append(parse(row, index))
            except (DatasetFormatError, ValueError, TypeError) as exc:
                raise DatasetFormatError(
                    f"{source.name}: {source.hub_id} ({located.origin}): {source.data_file} row "
                    f"{index + 1}: {exc}; {hint(source)}"
                ) from exc
        _PARSED[key] = problems
    return _PARSED[key], located


def _data(data: DataSettings | None) -> DataSettings:
    """The given data settings, else the environment's and the config file's."""
    return data if data is not None else Settings().data


def load_benchmark(
    name: str,
    data: DataSettings | None = None,
    limit: int = 0,
    levels: tuple[int, ...] = (1, 2, 3, 4, 5),
) -> list[BenchmarkProblem]:
    """Problems of benchmark ``name`` (a key of the table, ``synthetic``, or ``synthetic-<level>``),
    at most ``limit`` of them (0 = all); ``levels`` of ``synthetic``."""
    if is_synthetic(name):
        return held_out_synthetic(limit or SYNTHETIC_SIZE, synthetic_levels(name, levels))
    if name not in BENCHMARKS:
        known = ", ".join(f"{s.name} ({s.hub_id})" for s in BENCHMARKS.values())
        raise ValueError(
            f"unknown benchmark {name!r} (eval.benchmarks); known: synthetic, synthetic-<level>, "
            f"{known}"
        )
    problems, _ = _problems(BENCHMARKS[name], _data(data))
    return problems[:limit] if limit else list(problems)


def load_benchmarks(
    config: EvalSettings, data: DataSettings | None = None, whole: bool = False
) -> dict[str, list[BenchmarkProblem]]:
    """The configured benchmarks (``config.benchmarks``), ``config.limit`` problems each (or
    ``config.limits[name]``). ``whole``: every problem of each, and of ``synthetic`` at least the
    held-out set's default size (what decontamination checks against)."""
    levels = tuple(config.synthetic_levels)
    out = {}
    for name in config.benchmarks:
        limit = config.limits.get(name, config.limit)
        if whole:
            limit = max(limit, SYNTHETIC_SIZE) if is_synthetic(name) else 0
        out[name] = load_benchmark(name, data, limit, levels)
    return out


# The held-out synthetic set: drawn with a seed no run uses for its training problems (runs draw
# theirs with the run seed, small integers), so it measures the demo model on unseen problems.
SYNTHETIC_SEED = 1_000_003
SYNTHETIC_SIZE = 200


def is_synthetic(name: str) -> bool:
    """``synthetic`` (the held-out problems of the levels a run trains on, eval.synthetic_levels)
    or ``synthetic-<level>`` (those of one level, e.g. a family the run does not train on)."""
    return name == "synthetic" or (name.startswith("synthetic-") and name[10:].isdigit())


def synthetic_levels(name: str, trained: tuple[int, ...]) -> tuple[int, ...]:
    return trained if name == "synthetic" else (int(name.removeprefix("synthetic-")),)


def held_out_synthetic(
    count: int, levels: tuple[int, ...] = (1, 2, 3, 4, 5)
) -> list[BenchmarkProblem]:
    from shared.datasets.synthetic import make_problems

    return [
        BenchmarkProblem(id=p.id, question=p.question, gold=str(p.answer), dataset="synthetic")
        for p in make_problems(count, seed=SYNTHETIC_SEED, levels=levels)
    ]


def load_pool(
    name: str, data: DataSettings | None = None, exclude: Iterable[str] | None = None
) -> list[BenchmarkProblem]:
    """The problems of training pool ``name`` (``run.pool``: ``math`` or ``deepscaler``).

    ``exclude`` holds problem texts that must not leak into training (matched with whitespace
    collapsed, in any case); None means the problems of the benchmarks the pool's table row
    names (MATH500 for the MATH pool). A problem whose text came before is left out too. Longer
    overlaps with any benchmark are the sampler's decontamination's.
    """
    if name not in POOLS:
        known = ", ".join(f"{s.name} ({s.hub_id})" for s in POOLS.values())
        raise ValueError(f"unknown pool {name!r} (run.pool); known: synthetic, {known}")
    data = _data(data)
    source = POOLS[name]
    if exclude is None:
        exclude = [p.question for b in source.exclude for p in load_benchmark(b, data)]
    seen = {text_key(text) for text in exclude}
    problems, _ = _problems(source, data)
    out = []
    for p in problems:  # and each problem once: a run refuses the same question twice
        if (key := text_key(p.question)) not in seen:
            seen.add(key)
            out.append(p)
    return out


def dataset_rows(name: str, data: DataSettings | None = None) -> list[dict[str, Any]]:
    """The raw rows of a benchmark or pool of the table, in its file's order (the order of
    ``load_benchmark``'s problems; for measurements that need fields no format keeps)."""
    source = BENCHMARKS.get(name) or POOLS.get(name)
    if source is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join([*BENCHMARKS, *POOLS])}")
    data = _data(data)
    return read_rows(source, data, locate(source, data))


@dataclass(frozen=True)
class Prepared:
    """What `dualphase data prepare` got for one dataset."""

    source: Source
    rows: int
    origin: str  # where it was read: a local copy, the cache, or the hub


def prepare(names: Iterable[str], data: DataSettings | None = None) -> list[Prepared]:
    """Each named benchmark or pool (``synthetic`` is made, not fetched: skipped) put into the
    cache (``hub.materialize``) and read once through load_dataset; what each has."""
    data = _data(data)
    out = []
    for name in dict.fromkeys(names):
        if is_synthetic(name):
            continue
        source = BENCHMARKS.get(name) or POOLS.get(name)
        if source is None:
            known = ", ".join([*BENCHMARKS, *POOLS])
            raise ValueError(f"unknown dataset {name!r}; known: synthetic, {known}")
        materialize(source, data)
        problems, located = _problems(source, data)
        out.append(Prepared(source, len(problems), located.origin))
    return out
