"""Benchmark loaders over the real benchmarks (local copies in the hub's layout, `hub_copy`, made
from the harness files beside the repository), TabMWP from a file built here, the MATH training
pool without the MATH500 problems, and errors that name file, line, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATASETS

from shared.core.settings import DataSettings
from shared.datasets import (
    BenchmarkProblem,
    DatasetFormatError,
    load_benchmark,
    load_pool,
    read_benchmark_file,
)

BENCHMARKS = SHARED_DATASETS / "benchmarks"


@pytest.mark.parametrize(
    ("name", "rows", "first_gold"),
    [
        ("gsm8k", 1319, "18"),
        ("math500", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("aime24", 30, "204"),
        ("amc23", 40, "27"),
        ("svamp", 1000, "145"),
        ("gaokao2023en", 385, "\\{x|-2\\leq x < 1\\}"),
    ],
)
def test_each_benchmark_loads_with_its_gold_format(
    name: str, rows: int, first_gold: str, data_settings: DataSettings
) -> None:
    problems = load_benchmark(name, data_settings)
    assert len(problems) == rows
    assert problems[0].gold == first_gold
    assert all(p.dataset == name and p.question for p in problems)
    assert len({p.id for p in problems}) == rows


def test_gold_formats_are_normalised_as_a_model_writes_them(data_settings: DataSettings) -> None:
    aime = {
        p.id: p.gold for p in read_benchmark_file("aime24", BENCHMARKS / "aime24" / "test.jsonl")
    }
    assert "025" not in aime.values() and aime["67"] == "25"  # raw "025"
    svamp = load_benchmark("svamp", data_settings, limit=3)
    assert svamp[0].question == (
        "There are 87 oranges and 290 bananas in Philip's collection. "
        "If the bananas are organized into 2 groups and oranges are "
        "organized into 93 groups. How big is each group of bananas?"
    )
    assert len(svamp) == 3


def test_tabmwp_builds_the_table_prompt(tmp_path: Path) -> None:
    rows = [
        {
            "pid": "7",
            "table_title": "Coins",
            "table": "Name | Coins\nAna | 1,200\nBo | 30",
            "question": "How many coins in all?",
            "choices": None,
            "answer": "1,230",
            "ans_type": "integer_number",
        },
        {
            "pid": "8",
            "table_title": "",
            "table": "Day | Rain\nMon | yes",
            "question": "Did it rain on Monday?",
            "choices": ["yes", "no"],
            "answer": "yes",
            "ans_type": "extractive_text",
        },
    ]
    file = tmp_path / "test.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    coins, rain = read_benchmark_file("tabmwp", file)
    assert coins == BenchmarkProblem(
        id="7",
        dataset="tabmwp",
        gold="1230",
        question='Read the following table regarding "Coins" and answer a question:\n'
        "Name | Coins\nAna | 1,200\nBo | 30\nHow many coins in all?",
    )
    assert rain.question.startswith("Read the following table and answer a question:\n")
    assert rain.question.endswith("Please select from the following options: ['yes', 'no']")
    assert rain.gold == "yes"


def test_tabmwp_reads_gold_numbers_as_the_harness_does(data_settings: DataSettings) -> None:
    problems = {p.id: p for p in load_benchmark("tabmwp", data_settings)}
    assert len(problems) == 1000
    rows = [json.loads(line) for line in (BENCHMARKS / "tabmwp" / "test.jsonl").open()]
    by_kind = {}
    for row in rows:  # one row of each kind the file holds: a fraction, separators, decimals
        answer = row["answer"]
        kind = "/" if "/" in answer else "," if "," in answer else "." if "." in answer else ""
        by_kind.setdefault((row["ans_type"], kind), row)
    fraction = by_kind["decimal_number", "/"]
    numerator, denominator = fraction["answer"].split("/")
    assert float(problems[fraction["pid"]].gold) == int(numerator) / int(denominator)
    thousands = by_kind["integer_number", ","]
    assert problems[thousands["pid"]].gold == thousands["answer"].replace(",", "")
    decimal = by_kind["decimal_number", "."]
    assert problems[decimal["pid"]].gold == repr(float(decimal["answer"])).removesuffix(".0")
    text = by_kind["extractive_text", ""]
    assert problems[text["pid"]].gold == text["answer"]


def test_training_pool_excludes_math500_problems(data_settings: DataSettings) -> None:
    pool = load_pool("math", data_settings)
    assert len(pool) == 4500
    assert pool[0].gold == "2" and pool[0].dataset == "math"
    math500 = {" ".join(p.question.split()) for p in load_benchmark("math500", data_settings)}
    assert not any(" ".join(p.question.split()) in math500 for p in pool)


def test_training_pool_gold_is_the_last_boxed_answer(tmp_path: Path) -> None:
    file = tmp_path / "pool.jsonl"
    solution = "First \\boxed{1}. Correcting: $\\boxed{\\frac{1}{2}}$."
    file.write_text(json.dumps({"problem": "P", "solution": solution, "idx": 3}) + "\n")
    assert read_benchmark_file("math", file) == [
        BenchmarkProblem(
            id="math-3", question="P", gold="\\frac{1}{2}", dataset="math", solution=solution
        )
    ]


@pytest.mark.parametrize(
    ("name", "line", "message"),
    [
        ("gsm8k", '{"question": "q", "answer": "no marker"}', "field 'answer' has no '#### "),
        ("math500", '{"problem": "q"}', "field 'answer' is missing"),
        ("svamp", '{"Body": "b", "Answer": 1.0}', "field 'Question' is missing"),
        ("aime24", '{"problem": "q", "answer": null}', "field 'answer' is missing"),
        ("tabmwp", '{"table": "t", "question": "q", "answer": "1"}', "field 'ans_type' is missing"),
        ("amc23", "{not json", "not JSON"),
    ],
)
def test_a_bad_line_names_file_line_and_field(
    tmp_path: Path, name: str, line: str, message: str
) -> None:
    file = tmp_path / "test.jsonl"
    file.write_text(
        '{"question": "ok", "problem": "ok", "answer": "#### 1", "Body": "b", '
        '"Question": "q", "Answer": 1, "table": "t", "ans_type": "x"}\n' + line + "\n"
    )
    with pytest.raises(DatasetFormatError, match=rf"{file}:2: .*{message}"):
        read_benchmark_file(name, file)


def test_training_pool_bad_line_names_the_field(tmp_path: Path) -> None:
    file = tmp_path / "pool.jsonl"
    file.write_text(json.dumps({"problem": "P", "solution": "no box"}) + "\n")
    with pytest.raises(DatasetFormatError, match=rf"{file}:1: .*field 'solution' has no"):
        read_benchmark_file("math", file)


def test_unknown_format_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format 'mmlu'"):
        read_benchmark_file("mmlu", tmp_path / "test.jsonl")
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        read_benchmark_file("gsm8k", tmp_path / "test.jsonl")


def test_synthetic_benchmark_is_held_out_from_demo_training_problems() -> None:
    from shared.datasets.problems import demo_problems

    held_out = load_benchmark("synthetic", limit=50)
    assert len(held_out) == 50 and all(p.gold.lstrip("-").isdigit() for p in held_out)
    training = {p.question for seed in range(5) for p in demo_problems(200, seed)}
    assert not training & {p.question for p in held_out}


def test_a_synthetic_level_benchmark_holds_held_out_problems_of_that_level_only() -> None:
    trained = load_benchmark("synthetic", limit=20, levels=(1,))
    untrained = load_benchmark("synthetic-2", limit=20, levels=(1,))  # the name sets the level
    assert {p.id.split("-")[1] for p in trained} == {"1"}
    assert {p.id.split("-")[1] for p in untrained} == {"2"}
    assert all(p.question.count("Then ") == 2 for p in untrained)  # two steps
    with pytest.raises(ValueError, match="synthetic-<level>"):
        load_benchmark("synthetic-two")


def test_synthetic_answers_are_not_in_the_question_and_reference_solutions_are_right() -> None:
    import re

    from shared.datasets.rows import last_boxed
    from shared.datasets.synthetic import make_problems

    problems = make_problems(500, seed=5)
    assert {p.level for p in problems} == {1, 2, 3, 4, 5}
    for p in problems:
        assert str(p.answer) not in re.findall(r"\d+", p.question), p.question
        assert last_boxed(p.solution) == str(p.answer)
        assert len(p.solution.splitlines()) == p.level + 2  # start, one line per step, answer
    assert make_problems(20, seed=5) == problems[:20]  # a function of the seed
