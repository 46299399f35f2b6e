"""GSM8K: grade-school word problems; the gold answer follows the last ``####``."""

from __future__ import annotations

from typing import Any

from shared.datasets.jsonl import DatasetFormatError
from shared.datasets.rows import BenchmarkProblem, field, format_number


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    answer = str(field(row, "answer"))
    if "####" not in answer:
        raise DatasetFormatError("field 'answer' has no '#### <number>' line")
    gold = format_number(answer.rsplit("####", 1)[1].strip().replace(",", ""))
    return BenchmarkProblem(
        id=str(row.get("idx", index)), question=field(row, "question"), gold=gold, dataset="gsm8k"
    )
