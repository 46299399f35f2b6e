"""Equivalence of LaTeX structures written with different spacing or delimiters: matrices, column
vectors, tuples, intervals and their unions, sets, fractions, roots, degrees, units, thousands
separators, percentages. Each prediction reaches the grader as a model writes it, inside the last
``\\boxed{}`` of a response; the gold is the benchmark's answer field."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.method.grading import Grader, extract_answer, is_equivalent

EQUIVALENT = [
    pytest.param(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\begin{bmatrix}1&2\\3&4\end{bmatrix}",
        id="matrix-1",
    ),
    pytest.param(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
        id="matrix-2",
    ),
    pytest.param(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        "\\begin{pmatrix}\n  1 & 2 \\\\\n  3 & 4\n\\end{pmatrix}",
        id="matrix-3",
    ),
    pytest.param(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\left(\begin{array}{cc} 1 & 2 \\ 3 & 4 \end{array}\right)",
        id="matrix-4",
    ),
    pytest.param(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\left[\begin{matrix}1 & 2\\3 & 4\end{matrix}\right]",
        id="matrix-5",
    ),
    pytest.param(
        r"\begin{pmatrix} \frac{1}{2} & 0 \\ 0 & -1 \end{pmatrix}",
        r"\begin{bmatrix} 0.5 & 0 \\ 0 & -1 \end{bmatrix}",
        id="matrix-6",
    ),
    pytest.param(
        r"\begin{pmatrix} -1 & \frac{3}{2} \\ 2 & -\sqrt{2} \end{pmatrix}",
        r"\begin{pmatrix}-1&\dfrac32\\2&-\sqrt2\end{pmatrix}",
        id="matrix-7",
    ),
    pytest.param(
        r"\begin{pmatrix} 1 & 2 \end{pmatrix}", r"\begin{bmatrix}1 & 2\end{bmatrix}", id="matrix-8"
    ),
    pytest.param(
        r"\begin{pmatrix} 3 \\ -1 \\ 2 \end{pmatrix}",
        r"\begin{bmatrix}3\\-1\\2\end{bmatrix}",
        id="vector-1",
    ),
    pytest.param(
        r"\begin{pmatrix} 3 \\ -1 \\ 2 \end{pmatrix}",
        r"\begin{pmatrix}3 \\ -1 \\ 2\end{pmatrix}",
        id="vector-2",
    ),
    pytest.param(
        r"\begin{pmatrix} 1/3 \\ 2/3 \end{pmatrix}",
        r"\begin{pmatrix} \frac{1}{3} \\ \frac{2}{3} \end{pmatrix}",
        id="vector-3",
    ),
    pytest.param(
        r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
        r"\begin{pmatrix} -\frac{1}{3} \\ \frac{2}{3} \\ \frac{5}{3} \end{pmatrix}",
        id="vector-4",
    ),
    pytest.param("(1, 2)", "(1,2)", id="tuple-1"),
    pytest.param("(1, 2)", r"\left( 1, 2 \right)", id="tuple-2"),
    pytest.param("(1, 2)", r"\left(1,\ 2\right)", id="tuple-3"),
    pytest.param("(1, 2)", "( 1 , 2 )", id="tuple-4"),
    pytest.param("(1, 2)", r"\left(1,\,2\right)", id="tuple-5"),
    pytest.param(r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)", id="tuple-6"),
    pytest.param(r"(-2, 3, \frac{1}{2})", "(-2,3,0.5)", id="tuple-7"),
    pytest.param("[2, 5)", "[2,5)", id="interval-1"),
    pytest.param("[2, 5)", r"\left[2, 5\right)", id="interval-2"),
    pytest.param("[2, 5)", r"\left[ 2,5 \right)", id="interval-3"),
    pytest.param(r"(-\infty, 3]", r"(-\infty,3]", id="interval-4"),
    pytest.param(r"[0, \frac{1}{2}]", "[0, 0.5]", id="interval-5"),
    pytest.param(r"x \in [2, 5)", "[2,5)", id="interval-6"),
    pytest.param(r"(-\infty, -2) \cup (3, \infty)", r"(-\infty,-2)\cup(3,\infty)", id="union-1"),
    pytest.param(
        r"(-\infty, -2) \cup (3, \infty)",
        r"\left(-\infty, -2\right) \cup \left(3, +\infty\right)",
        id="union-2",
    ),
    pytest.param(
        r"(-\infty, -2) \cup (3, \infty)", r"(3, \infty) \cup (-\infty, -2)", id="union-3"
    ),
    pytest.param(
        r"(-\infty, -2) \cup (3, \infty)", r"(-\infty,-2)\,\cup\,(3,\infty)", id="union-4"
    ),
    pytest.param(
        r"(-\infty, -2) \cup (3, \infty)", r"x \in (-\infty, -2) \cup (3, \infty)", id="union-5"
    ),
    pytest.param(r"\{1, 2, 3\}", r"\{3,2,1\}", id="set-1"),
    pytest.param(r"\{1, 2, 3\}", r"\left\{1, 2, 3\right\}", id="set-2"),
    pytest.param(r"\{1, 2, 3\}", r"\{ 1,2,3 \}", id="set-3"),
    pytest.param(r"\{1, 2, 3\}", r"\lbrace 1, 2, 3\rbrace", id="set-4"),
    pytest.param(r"\{-1, \frac{1}{2}\}", r"\{\frac12, -1\}", id="set-5"),
    pytest.param("-2, 5", "5, -2", id="list-1"),
    pytest.param("-2, 5", "-2,5", id="list-2"),
    pytest.param(r"\frac{1}{2}", r"\frac12", id="frac-1"),
    pytest.param(r"\frac12", r"\dfrac{1}{2}", id="frac-2"),
    pytest.param(r"\frac{1}{2}", "0.5", id="frac-3"),
    pytest.param(r"\frac{1}{2}", r"\tfrac{1}{2}", id="frac-4"),
    pytest.param(r"-\frac{3}{4}", r"\frac{-3}{4}", id="frac-5"),
    pytest.param(r"-\frac{3}{4}", "-0.75", id="frac-6"),
    pytest.param(r"\sqrt{2}", r"\sqrt2", id="sqrt-1"),
    pytest.param(r"2\sqrt{3}", r"2 \sqrt 3", id="sqrt-2"),
    pytest.param(r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}2", id="sqrt-3"),
    pytest.param(r"30^\circ", "30", id="degree-1"),
    pytest.param("30", r"30^{\circ}", id="degree-2"),
    pytest.param(r"30^\circ", r"30^{\circ}", id="degree-3"),
    pytest.param(r"45^{\circ}", r"45 ^\circ", id="degree-4"),
    pytest.param(r"30^\circ", r"30\text{ degrees}", id="degree-5"),
    pytest.param("5", r"5\text{ cm}", id="unit-1"),
    pytest.param("12", r"12 \text{ inches}", id="unit-2"),
    pytest.param(r"18\text{ cm}^2", "18", id="unit-3"),
    pytest.param("18", r"\$18.00", id="unit-4"),
    pytest.param("1000", "1,000", id="thousands-1"),
    pytest.param("1,000,000", "1000000", id="thousands-2"),
    pytest.param("1000000", "1{,}000{,}000", id="thousands-3"),
    pytest.param("12345", r"12\,345", id="thousands-4"),
    pytest.param(r"50\%", "50", id="percent-1"),
    pytest.param("50", r"50\%", id="percent-2"),
    pytest.param(r"12.5\%", r"12.5 \%", id="percent-3"),
    pytest.param("-5", "- 5", id="negative-1"),
    pytest.param("-3", "(-3)", id="negative-2"),
    pytest.param(r"-\frac{1}{2}", "-0.5", id="negative-3"),
    pytest.param("y = 2x + 3", "y=2x+3", id="equation-1"),
]

DIFFERENT = [
    pytest.param("(1, 2)", "(2,1)", id="tuple-1"),
    pytest.param("(1, 2)", "(1, 2, 3)", id="tuple-2"),
    pytest.param("(1, 2)", "[1, 2]", id="tuple-3"),
    pytest.param("[2, 5)", "(2,5)", id="interval-1"),
    pytest.param("[2, 5)", "[2,5]", id="interval-2"),
    pytest.param("[2, 5)", r"\left(2, 5\right]", id="interval-3"),
    pytest.param(
        r"(-\infty, -2) \cup (3, \infty)", r"(-\infty, -2] \cup (3, \infty)", id="union-1"
    ),
    pytest.param(
        r"(-\infty, -2) \cup (3, \infty)", r"(-\infty, 3) \cup (-2, \infty)", id="union-2"
    ),
    pytest.param(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\begin{pmatrix} 1 & 2 \\ 3 & 5 \end{pmatrix}",
        id="matrix-1",
    ),
    pytest.param(
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\begin{bmatrix} 1 & 3 \\ 2 & 4 \end{bmatrix}",
        id="matrix-2",
    ),
    pytest.param(
        r"\begin{pmatrix} 3 \\ -1 \\ 2 \end{pmatrix}",
        r"\begin{pmatrix} 3 \\ 1 \\ 2 \end{pmatrix}",
        id="vector-1",
    ),
    pytest.param(
        r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
        r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}",
        id="vector-2",
    ),
    pytest.param(r"\{1, 2, 3\}", r"\{1, 2\}", id="set-1"),
    pytest.param(r"\{1, 2, 3\}", r"\{1, 2, 4\}", id="set-2"),
    pytest.param("[1, 2]", r"\{1, 2\}", id="set-3"),
    pytest.param(r"\frac{1}{2}", r"\frac{2}{1}", id="frac-1"),
    pytest.param(r"\sqrt{2}", "2", id="sqrt-1"),
    pytest.param("1,000", "100", id="thousands-1"),
    pytest.param(r"50\%", "5", id="percent-1"),
    pytest.param("-5", "5", id="negative-1"),
    pytest.param(r"30^\circ", "60", id="degree-1"),
]


def _response(pred: str) -> str:
    return f"So the final answer is $\\boxed{{{pred}}}$."


@pytest.fixture(scope="module")
def grader() -> Iterator[Grader]:
    with Grader(timeout_s=5.0, workers=1) as pool:
        yield pool


@pytest.mark.parametrize(("gold", "pred"), EQUIVALENT)
def test_same_structure_written_differently_is_equivalent(gold: str, pred: str) -> None:
    assert is_equivalent(extract_answer(_response(pred)), gold)


@pytest.mark.parametrize(("gold", "pred"), DIFFERENT)
def test_different_structures_are_not_equivalent(gold: str, pred: str) -> None:
    assert not is_equivalent(extract_answer(_response(pred)), gold)


def test_the_worker_pool_agrees(grader: Grader) -> None:
    """The same pairs through Grader.grade_many, as evaluation and the verifier call it."""
    items = [(_response(p), g) for g, p in (x.values for x in EQUIVALENT + DIFFERENT)]
    grades = grader.grade_many(items)
    expected = [True] * len(EQUIVALENT) + [False] * len(DIFFERENT)
    wrong = [
        (i[1], g.extracted)
        for i, g, e in zip(items, grades, expected, strict=True)
        if g.correct != e
    ]
    assert not wrong, wrong
