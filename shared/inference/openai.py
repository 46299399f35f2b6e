"""The ``openai`` backend: any OpenAI-compatible chat endpoint (vLLM, ``transformers serve``),
the configured one or one it starts for its model (``inference.serve_command``).

One request per sample (``n=1``, ``seed = params.seed + i``), so every sample is seeded the same
way as in the in-process backends; at most ``cfg.max_concurrency`` requests are in flight.
429, 5xx, timeouts and connection errors are retried with exponential back-off, and after the
last retry raise ``BackendUnavailable``, which the consumer retries in turn; any other error
status raises ``OpenAIError`` naming the status and the server's answer.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from shared.core.bus import RetryableError
from shared.core.messages import SamplingParams
from shared.core.settings import InferenceConfig
from shared.inference import ChatResult, Completion, Conversation
from shared.inference.model import model_identity
from shared.inference.server import ModelServer
from shared.inference.stops import apply_stops

MAX_BACKOFF_S = 30.0


class OpenAIError(RuntimeError):
    """The server refused the request: retrying it will not help (the message is dead-lettered)."""


class BackendUnavailable(RetryableError):
    """The server kept failing (down, restarting, overloaded) through every retry: the consumer
    backs off and retries the message, so a server away for a while loses no job."""


class OpenAIBackend:
    def __init__(self, model: str, cfg: InferenceConfig) -> None:
        self.model = model  # sent as "model" in each request; a local folder path works for
        self.cfg = cfg  # `transformers serve`, a served model name for `vllm serve`
        self.model_id = model_identity(model)
        # With a serve command, this backend starts the server for its model and stops it on
        # close (shared/inference/server.py); without, it uses the configured server.
        self.server = ModelServer(model, cfg) if cfg.serve_command else None
        base_url = self.server.base_url if self.server else cfg.openai_base_url
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.client = httpx.Client(
            headers={"Authorization": f"Bearer {cfg.openai_api_key}"},
            timeout=cfg.request_timeout_s,
            limits=httpx.Limits(max_connections=cfg.max_concurrency),
        )
        self.pool = ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix="openai")
        self._tokenizer: Any = None

    def chat(self, conversations: list[Conversation], params: SamplingParams) -> list[ChatResult]:
        futures = [
            [
                self.pool.submit(self._complete, conv, params, params.seed + i)
                for i in range(params.n)
            ]
            for conv in conversations
        ]
        return [ChatResult([f.result() for f in fs], self.model_id) for fs in futures]

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()
        if self.server:
            self.server.close()

    def count_tokens(self, text: str) -> int:
        # The OpenAI API has no tokenizer endpoint; load the model's tokenizer locally, once.
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def _complete(
        self, conversation: Conversation, params: SamplingParams, seed: int
    ) -> Completion:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": conversation,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": seed,
            "n": 1,
        }
        if params.stop:
            body["stop"] = params.stop
        answer = self._post(body)
        choice = answer["choices"][0]
        # Servers that ignore "stop" still get it applied here (and the answer-line cut, which
        # no server knows: the text after it was generated, but is dropped).
        text, stopped = apply_stops(choice["message"].get("content") or "", params)
        usage = answer.get("usage") or {}
        tokens = usage.get("completion_tokens") or self.count_tokens(text)
        finish = "length" if choice.get("finish_reason") == "length" and not stopped else "stop"
        return Completion(text=text, tokens=tokens, finish_reason=finish)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        error = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(min(self.cfg.retry_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                return response.json()
            error = f"HTTP {response.status_code}: {response.text[:2000]}"
            if response.status_code != 429 and response.status_code < 500:
                raise OpenAIError(f"POST {self.url} (model {self.model!r}) refused: {error}")
        raise BackendUnavailable(
            f"POST {self.url} (model {self.model!r}) failed after "
            f"{self.cfg.max_retries + 1} attempts; last error: {error}"
        )
