"""Source markers: each training sample says where it came from (multi-turn or rejection).

The marker is rendered one of three ways (``SamplerSettings.marker_style``): inside the system
prompt, as a prefix of the response, or not at all (the ablation). Evaluation can ask for one
behaviour by rendering the same marker into its prompt (``system_content``) or by stripping a
prefix marker from a response before grading (``strip_marker``).
"""

from __future__ import annotations

from typing import Literal

from shared.core.settings import SamplerSettings

Source = Literal["multi-turn", "rejection"]
Message = dict[str, str]


def marker(source: Source, settings: SamplerSettings) -> str:
    return settings.marker_multi_turn if source == "multi-turn" else settings.marker_rejection


def system_content(system_prompt: str, source: Source, settings: SamplerSettings) -> str:
    """The system prompt, with the marker appended when markers go into the system prompt."""
    if settings.marker_style != "system":
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
    if settings.marker_style == "prefix":
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
