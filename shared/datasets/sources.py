"""Where each dataset comes from: the one table of public dataset ids, pinned revisions, splits,
files and the format module (``shared/datasets/<format>.py``) that parses their rows.

Each revision is the commit sha of the dataset's repository on the Hugging Face hub. None could be
checked against the hub from here (no hub is reachable); each was read from public material that
names the repository, the sha and, for most, the file (docs/data.md says where each comes from):

- openai/gsm8k 740312a: pinned in several public evaluation scripts together with the sha-256 of
  ``main/test-00000-of-00001.parquet`` (1319 rows).
- HuggingFaceH4/MATH-500 6e4ed1a: pinned with ``test.jsonl`` and its sha-256 (500 rows).
- HuggingFaceH4/aime_2024 2fe88a2: the head of main ("Update README.md"), pinned with
  ``data/train-00000-of-00001.parquet`` (30 rows); its only split is named ``train``.
- math-ai/amc23 80815d3: the head of main, pinned with ``test-00000-of-00001.parquet`` (40 rows;
  fields id, question, answer, url: the problem text is in ``question``).
- tongyx361/svamp b165989: the head of main (hub pages show the full sha in a blob address),
  ``data/test-00000-of-00001.parquet``, all 1000 SVAMP problems in one test split as the
  Qwen2.5-Math harness evaluates them (ChilleD/SVAMP splits them 700/300).
- MARIO-Math-Reasoning/Gaokao2023-Math-En 6c7bdec: the head of main (hub commit pages),
  ``Gaokao2023-Math-En.jsonl`` (385 rows), the hub's split ``train``.
- Arietem/tabmwp c14d816: the commit that uploaded ``problems_test1k.json`` (the TabMWP release's
  1000-problem test subset, the one the harness evaluates; later commits deleted it). The file is
  one JSON object keyed by problem id, which load_dataset cannot read row by row: ``keyed`` says
  so, and the loader writes it as JSON Lines (the key as ``pid``) before load_dataset reads it.
  The file's rows could not be seen from here, only its name, size (1.12 MB) and commit.
- DigitalLearningGmbH/MATH-lighteval 0530c78: pinned with ``data/train-00000-of-00001.parquet``
  in public scripts; its test split (5000 rows) is the MATH test set, of which the 4500 problems
  outside MATH500 make the MATH training pool.
- agentica-org/DeepScaleR-Preview-Dataset b6ae8c6: the head of main ("Update README.md"),
  ``deepscaler.json`` (a JSON array of problem, answer, solution; about 40.3k rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Source:
    """One dataset: which hub repository, revision, split and file, and how its rows parse."""

    name: str  # the benchmark's or pool's name in the settings (eval.benchmarks, run.pool)
    kind: Literal["benchmark", "pool"]
    hub_id: str
    config: str  # the hub's config (subset) the file belongs to
    split: str
    revision: str  # commit sha of the hub repository
    data_file: str  # the split's file, at its path in the repository
    format: str  # the module of shared/datasets that parses a row
    keyed: bool = False  # the file is one JSON object keyed by problem id (see above)
    exclude: tuple[str, ...] = ()  # benchmarks whose problems a pool leaves out (same text)


_TABLE = (
    Source(
        "gsm8k",
        "benchmark",
        "openai/gsm8k",
        "main",
        "test",
        "740312add88f781978c0658806c59bc2815b9866",
        "main/test-00000-of-00001.parquet",
        "gsm8k",
    ),
    Source(
        "math500",
        "benchmark",
        "HuggingFaceH4/MATH-500",
        "default",
        "test",
        "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be",
        "test.jsonl",
        "math500",
    ),
    Source(
        "aime24",
        "benchmark",
        "HuggingFaceH4/aime_2024",
        "default",
        "train",
        "2fe88a2f1091d5048c0f36abc874fb997b3dd99a",
        "data/train-00000-of-00001.parquet",
        "aime24",
    ),
    Source(
        "amc23",
        "benchmark",
        "math-ai/amc23",
        "default",
        "test",
        "80815d37005feb82cd7f8fbc6901d5d3eff43057",
        "test-00000-of-00001.parquet",
        "amc23",
    ),
    Source(
        "svamp",
        "benchmark",
        "tongyx361/svamp",
        "default",
        "test",
        "b1659891d2fadaf805de8ff31f46a3e2cdd2966c",
        "data/test-00000-of-00001.parquet",
        "svamp",
    ),
    Source(
        "tabmwp",
        "benchmark",
        "Arietem/tabmwp",
        "default",
        "test",
        "c14d8162c9a668a01b55ab11e450863fecda81ce",
        "problems_test1k.json",
        "tabmwp",
        keyed=True,
    ),
    Source(
        "gaokao2023en",
        "benchmark",
        "MARIO-Math-Reasoning/Gaokao2023-Math-En",
        "default",
        "train",
        "6c7bdecd205ed623b5e6c92335deb4f13a7cdd9b",
        "Gaokao2023-Math-En.jsonl",
        "gaokao2023en",
    ),
    Source(
        "math",
        "pool",
        "DigitalLearningGmbH/MATH-lighteval",
        "default",
        "test",
        "0530c78699ea5e8eb5530600900e1f328b48acad",
        "data/test-00000-of-00001.parquet",
        "math",
        exclude=("math500",),
    ),
    Source(
        "deepscaler",
        "pool",
        "agentica-org/DeepScaleR-Preview-Dataset",
        "default",
        "train",
        "b6ae8c60f5c1f2b594e2140b91c49c9ad0949e29",
        "deepscaler.json",
        "deepscaler",
    ),
)

BENCHMARKS: dict[str, Source] = {s.name: s for s in _TABLE if s.kind == "benchmark"}
POOLS: dict[str, Source] = {s.name: s for s in _TABLE if s.kind == "pool"}
