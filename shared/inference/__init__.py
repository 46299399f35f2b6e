"""Batched chat generation: one interface, three backends.

``load_backend(cfg)`` returns a backend whose ``chat`` takes many conversations and one set of
sampling parameters and returns, per conversation, ``params.n`` completions plus the identity of
the model that wrote them. Sample ``i`` of every conversation is seeded with ``params.seed + i``.

Each backend has its own module, imported only when chosen (a service that never generates does
not import torch):

- ``transformers`` (``transformers.py``): in-process, CPU or GPU, continuous batching
  (``decode.py``) or static batches with left padding.
- ``vllm`` (``vllm.py``): in-process vLLM engine.
- ``openai`` (``openai.py``): any OpenAI-compatible chat endpoint, or a server it starts.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.core.messages import SamplingParams
from shared.core.settings import InferenceConfig
from shared.inference.model import resolve_model

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # generated tokens
    finish_reason: str  # "stop" | "length"


@dataclass(frozen=True)
class ChatResult:
    completions: list[Completion]  # n completions for one conversation, sample i seeded seed + i
    model_id: str  # path or id plus revision or weight-file hash


class Backend(Protocol):
    model_id: str

    def chat(
        self, conversations: list[Conversation], params: SamplingParams
    ) -> list[ChatResult]: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


def load_backend(cfg: InferenceConfig, model: str | None = None) -> Backend:
    """The configured backend for ``model`` (default ``cfg.model``, e.g. a checkpoint path)."""
    name = resolve_model(model or cfg.model, cfg)
    if cfg.backend == "transformers":
        from shared.inference.transformers import TransformersBackend

        return TransformersBackend(name, cfg)
    if cfg.backend == "vllm":
        from shared.inference.vllm import VLLMBackend

        return VLLMBackend(name, cfg)
    from shared.inference.openai import OpenAIBackend

    return OpenAIBackend(name, cfg)


@contextmanager
def start_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on ``path`` (a file on a shared volume) for the duration of the block."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # released when the file is closed
        yield


class OneModel:
    """The backend of one model at a time: asking for another closes the first before loading
    the next, since a GPU (or a host's memory) holds one model beside the rest of the work."""

    def __init__(self, cfg: InferenceConfig) -> None:
        self.cfg = cfg
        self.model: str | None = None
        self.backend: Backend | None = None

    def __call__(self, model: str | None = None) -> Backend:
        """The backend of ``model`` (default ``cfg.model``, e.g. a checkpoint path). Stopping
        the old one and starting the new one happen under ``cfg.start_lock``: a co-tenant of the
        same GPU is never starting its server while this one frees or takes memory."""
        model = model or self.cfg.model
        if self.backend is None or model != self.model:
            with start_lock(self.cfg.start_lock):
                self.close()
                self.backend = load_backend(self.cfg, model)
            self.model = model
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = self.model = None
