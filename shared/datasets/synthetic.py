"""Synthetic arithmetic word problems with exact integer answers and graded difficulty.

The demo run trains on these: a 135M model solves some of the easy ones and few of the hard ones,
which is the spread that difficulty-aware rejection sampling is about. Level L chains L steps.
"""

from __future__ import annotations

import random
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


def _step(rng: random.Random, total: int, item: str, name: str) -> tuple[str, int]:
    """One more step applied to the running total: a sentence and the new total."""
    kind = rng.choice(["gain", "lose", "times", "share"] if total > 1 else ["gain", "times"])
    if kind == "gain":
        k = rng.randint(2, 30)
        return f"Then {name} gets {k} more {item}.", total + k
    if kind == "lose":
        k = rng.randint(1, total - 1)
        return f"Then {name} gives away {k} {item}.", total - k
    if kind == "times":
        k = rng.randint(2, 5)
        return f"Then the number of {item} {name} has is multiplied by {k}.", total * k
    divisors = [d for d in range(2, 7) if total % d == 0]
    if not divisors:
        k = rng.randint(2, 30)
        return f"Then {name} finds {k} more {item}.", total + k
    d = rng.choice(divisors)
    return f"Then {name} splits the {item} into {d} equal piles and keeps one pile.", total // d


def make_problem(rng: random.Random, index: int, level: int) -> SyntheticProblem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(3, 40)
    sentences = [f"{name} has {total} {item}."]
    for _ in range(level):
        sentence, total = _step(rng, total, item, name)
        sentences.append(sentence)
    sentences.append(f"How many {item} does {name} have now?")
    return SyntheticProblem(f"syn-{level}-{index}", " ".join(sentences), total, level)


def make_problems(
    count: int, seed: int = 0, levels: tuple[int, ...] = (1, 2, 3, 4, 5)
) -> list[SyntheticProblem]:
    """``count`` problems spread evenly over ``levels``, the same for the same seed."""
    rng = random.Random(seed)
    return [make_problem(rng, i, levels[i % len(levels)]) for i in range(count)]
