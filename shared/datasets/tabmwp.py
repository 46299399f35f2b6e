"""TabMWP: table word problems; the table goes into the prompt, as in the harness."""

from __future__ import annotations

from typing import Any

from shared.datasets.rows import BenchmarkProblem, field, format_number


def number(answer: str) -> str:
    """A numeric gold answer as the harness reads it: "3/10" -> 0.3, "4,656" -> 4656,
    "12%" -> 0.12, "3.30" -> 3.3."""
    if "/" in answer:
        numerator, denominator = answer.split("/")
        return format_number(int(numerator) / int(denominator))
    if "%" in answer:
        return format_number(float(answer.split("%")[0].replace(",", "")) / 100)
    return format_number(float(answer.replace(",", "")))


def parse(row: dict[str, Any], index: int) -> BenchmarkProblem:
    title = row.get("table_title") or ""
    question = "Read the following table " + (f'regarding "{title}" ' if title else "")
    question += f"and answer a question:\n{field(row, 'table')}\n{field(row, 'question')}"
    if row.get("choices"):
        question += f" Please select from the following options: {row['choices']}"
    gold = str(field(row, "answer")).strip()
    if field(row, "ans_type") in ("integer_number", "decimal_number"):
        gold = number(gold)
    return BenchmarkProblem(
        id=str(row.get("pid", index)), question=question, gold=gold, dataset="tabmwp"
    )
