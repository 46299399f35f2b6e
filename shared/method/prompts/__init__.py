"""Prompt templates, one folder per version. The version is stored with every generation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Prompts:
    version: str
    system: str  # the Qwen2.5-Math harness system prompt: step by step, answer in \boxed{}
    review: str  # turn 2: verify, backtrack, decompose, reason backward, revise
    rewrite: str  # turn 3: one coherent long solution


def load_prompts(version: str) -> Prompts:
    folder = HERE / version
    if not folder.is_dir():
        known = sorted(p.name for p in HERE.iterdir() if p.is_dir() and p.name != "__pycache__")
        raise ValueError(f"prompt_version {version!r}: no folder {folder} (known: {known})")
    read = lambda name: (folder / f"{name}.txt").read_text().strip()  # noqa: E731
    return Prompts(version, read("system"), read("review"), read("rewrite"))
