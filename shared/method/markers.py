"""Source markers: each training sample says where it came from (multi-turn or rejection).

The marker is rendered one of three ways (``SamplerSettings.marker_style``): inside the system
prompt, as a prefix of the response, or not at all (the ablation).

A trained checkpoint keeps, beside its weights, the prompt manifest (``PROMPT_MANIFEST``): for
each source it was trained on, the exact system prompt of its training rows and the prefix marker
its responses start with. Phase-2 sampling and evaluation prompt the checkpoint with that system
prompt (``inference_prompt``), so a model is never asked in a prompt it was not trained on; a base
model, which has no manifest, gets the plain prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.core.settings import SamplerSettings

# oracle: the reference solutions of the oracle arm, a control trained without a marker.
Source = Literal["multi-turn", "rejection", "oracle"]
Message = dict[str, str]


def marker(source: Source, settings: SamplerSettings) -> str:
    if source == "oracle":
        return ""
    return settings.marker_multi_turn if source == "multi-turn" else settings.marker_rejection


def system_content(system_prompt: str, source: Source, settings: SamplerSettings) -> str:
    """The system prompt, with the marker appended when markers go into the system prompt."""
    if settings.marker_style != "system" or not marker(source, settings):
        return system_prompt
    return (
        f"{system_prompt}\n{marker(source, settings)}"
        if system_prompt
        else marker(source, settings)
    )


def render(
    system_prompt: str, question: str, answer: str, source: Source, settings: SamplerSettings
) -> dict[str, list[Message]]:
    """One sample as TRL's conversational prompt-completion pair, marker rendered as configured."""
    if settings.marker_style == "prefix" and marker(source, settings):
        answer = f"{marker(source, settings)}\n{answer}"
    return {
        "prompt": [
            {"role": "system", "content": system_content(system_prompt, source, settings)},
            {"role": "user", "content": question},
        ],
        "completion": [{"role": "assistant", "content": answer}],
    }


def strip_marker(response: str, settings: SamplerSettings) -> str:
    """A response without a leading marker (a model trained with prefix markers writes one)."""
    text = response.lstrip()
    for mark in (settings.marker_multi_turn, settings.marker_rejection):
        if text.startswith(mark):
            return text[len(mark) :].lstrip()
    return response


PROMPT_MANIFEST = "dualphase-prompt.json"


def prompt_manifest(rows: Iterable[dict[str, Any]], settings: SamplerSettings) -> dict[str, Any]:
    """Per source of the training rows: the system prompt they carry and their prefix marker."""
    sources: dict[str, dict[str, str]] = {}
    for row in rows:
        if row["source"] in sources:
            continue
        first = row["prompt"][0]
        mark = marker(row["source"], settings)
        sources[row["source"]] = {
            "system": first["content"] if first["role"] == "system" else "",
            "prefix": mark if mark and row["completion"][0]["content"].startswith(mark) else "",
        }
    return {"sources": sources}


def write_prompt_manifest(model_dir: Path, manifest: dict[str, Any]) -> None:
    path = Path(model_dir) / PROMPT_MANIFEST
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)


@dataclass(frozen=True)
class InferencePrompt:
    """How to prompt a model: the system prompt, and the marker source it stands for."""

    system: str
    source: str = ""  # "" for a model without a prompt manifest (the base model)
    prefix: str = ""  # the marker its responses start with (prefix style)

    def conversation(self, question: str, example: str = "") -> list[Message]:
        """System prompt and question; ``example`` (a worked example) goes before the question."""
        user = f"{example.strip()}\n\n{question}" if example.strip() else question
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def inference_prompt(model: str, plain_system: str, preferred: Source) -> InferencePrompt:
    """The prompt ``model`` was trained with: the ``preferred`` source's if it was trained on it,
    else the one source it saw; ``plain_system`` for a model with no prompt manifest."""
    path = Path(model) / PROMPT_MANIFEST if model else None
    if path is None or not path.is_file():
        return InferencePrompt(plain_system)
    sources = json.loads(path.read_text())["sources"]
    if not sources:
        return InferencePrompt(plain_system)
    source = preferred if preferred in sources else next(iter(sources))
    return InferencePrompt(sources[source]["system"], source, sources[source]["prefix"])
