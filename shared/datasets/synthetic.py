"""Synthetic arithmetic word problems with exact integer answers and graded difficulty.

The demo run trains on these: a 135M model solves some of the easy ones and few of the hard ones,
which is the spread that difficulty-aware rejection sampling is about. Level L chains L steps.

Two properties keep a right answer meaning a solved problem: the answer never appears as a
number in the question (a model that echoes a number of the text is not rewarded), and every
problem carries its reference solution, step by step with the answer in ``\\boxed{}``, for the
oracle arm that trains on reference solutions instead of the model's own.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = [
    "Ava",
    "Ben",
    "Chen",
    "Dana",
    "Eli",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
]
ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "shells",
    "cards",
    "coins",
    "cookies",
    "stamps",
]


@dataclass(frozen=True)
class SyntheticProblem:
    id: str
    question: str
    answer: int
    level: int
    solution: str = ""  # the reference solution: one line per step, the answer in \boxed{}


def _step(rng: random.Random, total: int, item: str, name: str) -> tuple[str, int, str]:
    """One more step applied to the running total: a sentence, the new total, its working."""
    kind = rng.choice(["gain", "lose", "times", "share"] if total > 1 else ["gain", "times"])
    if kind == "gain":
        k = rng.randint(2, 30)
        return f"Then {name} gets {k} more {item}.", total + k, f"{total} + {k} = {total + k}"
    if kind == "lose":
        k = rng.randint(1, total - 1)
        return f"Then {name} gives away {k} {item}.", total - k, f"{total} - {k} = {total - k}"
    if kind == "times":
        k = rng.randint(2, 5)
        sentence = f"Then the number of {item} {name} has is multiplied by {k}."
        return sentence, total * k, f"{total} * {k} = {total * k}"
    divisors = [d for d in range(2, 7) if total % d == 0]
    if not divisors:
        k = rng.randint(2, 30)
        return f"Then {name} finds {k} more {item}.", total + k, f"{total} + {k} = {total + k}"
    d = rng.choice(divisors)
    sentence = f"Then {name} splits the {item} into {d} equal piles and keeps one pile."
    return sentence, total // d, f"{total} / {d} = {total // d}"


NUMBER = re.compile(r"\d+")


def make_problem(rng: random.Random, index: int, level: int) -> SyntheticProblem:
    """A problem of ``level`` steps whose answer is not a number of its text (drawn again until
    it is not, from the same stream, so the set stays a function of the seed)."""
    while True:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        total = rng.randint(3, 40)
        sentences, working = [f"{name} has {total} {item}."], [f"{name} starts with {total}."]
        for _ in range(level):
            sentence, total, step = _step(rng, total, item, name)
            sentences.append(sentence)
            working.append(f"{step}.")
        sentences.append(f"How many {item} does {name} have now?")
        question = " ".join(sentences)
        if str(total) not in NUMBER.findall(question):
            break
    working.append(f"The answer is \\boxed{{{total}}}.")
    return SyntheticProblem(f"syn-{level}-{index}", question, total, level, "\n".join(working))


def make_problems(
    count: int, seed: int = 0, levels: tuple[int, ...] = (1, 2, 3, 4, 5)
) -> list[SyntheticProblem]:
    """``count`` problems spread evenly over ``levels``, the same for the same seed."""
    rng = random.Random(seed)
    return [make_problem(rng, i, levels[i % len(levels)]) for i in range(count)]
