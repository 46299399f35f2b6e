"""Source markers: each training sample says where it came from (multi-turn or rejection).

The marker is rendered one of three ways (``SamplerSettings.marker_style``): inside the system
prompt, as a prefix of the response, or not at all (the ablation).

A trained checkpoint keeps, beside its weights, its prompt manifest (``PROMPT_MANIFEST``): the
system prompt it is sampled and evaluated with, which follows from the settings alone
(``checkpoint_prompt``), never from which sources its shard happened to hold: two runs of one
config, or the joint and sequential ablation, prompt their models alike. Phase-2 sampling and
evaluation read it (``inference_prompt``); a base model, which has no manifest, gets the plain
prompt. Under the prefix style a checkpoint is prompted without a marker: the marker is what its
answers start with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


PROMPT_MANIFEST = "dualphase-prompt.json"


def checkpoint_prompt(stage: str, system_prompt: str, settings: SamplerSettings) -> dict[str, str]:
    """The prompt manifest of a checkpoint trained at ``stage``: M1 and M2 are prompted with the
    system prompt of ``inference_marker``'s source as their training rows render it, the oracle
    arm (trained without a marker) with the plain one."""
    source: Source = "oracle" if stage == "oracle" else settings.inference_marker
    in_system = settings.marker_style == "system"
    return {
        "system": system_content(system_prompt, source, settings),
        "marker": marker(source, settings) if in_system else "",
        "marker_style": settings.marker_style,
    }


def write_prompt_manifest(model_dir: Path, manifest: dict[str, str]) -> None:
    path = Path(model_dir) / PROMPT_MANIFEST
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)


@dataclass(frozen=True)
class InferencePrompt:
    """How to prompt a model: its system prompt (with the source marker in it, if any)."""

    system: str

    def conversation(self, question: str, example: str = "") -> list[Message]:
        """System prompt and question; ``example`` (a worked example) goes before the question."""
        user = f"{example.strip()}\n\n{question}" if example.strip() else question
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def inference_prompt(model: str, plain_system: str) -> InferencePrompt:
    """The prompt in ``model``'s manifest, or ``plain_system`` for a model without one."""
    path = Path(model) / PROMPT_MANIFEST if model else None
    if path is None or not path.is_file():
        return InferencePrompt(plain_system)
    manifest = json.loads(path.read_text())
    return InferencePrompt(manifest["system"])
