"""The ``vllm`` backend: an in-process vLLM engine (install the ``gpu`` extra; GPU hosts).

vLLM schedules and batches the requests itself (continuous batching, paged KV cache), so all
rows go in one ``chat`` call. A model folder holding a LoRA adapter (``adapter_config.json``) is
served as its base model plus that adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.core.messages import SamplingParams
from shared.core.settings import InferenceConfig
from shared.inference import ChatResult, Completion, Conversation
from shared.inference.model import model_identity, resolve_model
from shared.inference.stops import apply_stops


class VLLMBackend:
    def __init__(self, model: str, cfg: InferenceConfig) -> None:
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        adapter_config = Path(model) / "adapter_config.json"
        self.lora = None
        base = model
        if adapter_config.is_file():
            base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
            base = resolve_model(base, cfg)
            self.lora = LoRARequest("adapter", 1, str(Path(model).resolve()))
        self.llm = LLM(
            model=base,
            dtype=cfg.dtype,
            enable_lora=self.lora is not None,
            max_lora_rank=cfg.max_lora_rank,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.model_id = model_identity(model)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def close(self) -> None:
        # vLLM's engine core runs in a child process; shutting it down frees the GPU.
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm

    def chat(self, conversations: list[Conversation], params: SamplingParams) -> list[ChatResult]:
        from vllm import SamplingParams as VLLMSamplingParams

        # One request per sample, each with its own seed, so sample i is seeded seed + i as in
        # the other backends (vLLM's n > 1 would share one seed).
        rows = [(c, i) for c in range(len(conversations)) for i in range(params.n)]
        sampling = [
            VLLMSamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=params.seed + i,
                stop=params.stop or None,
            )
            for _, i in rows
        ]
        outputs = self.llm.chat(
            [conversations[c] for c, _ in rows], sampling, lora_request=self.lora, use_tqdm=False
        )
        done = {}
        for row, output in zip(rows, outputs, strict=True):
            sample = output.outputs[0]
            text, stopped = apply_stops(sample.text, params)
            finish = "length" if sample.finish_reason == "length" and not stopped else "stop"
            done[row] = Completion(text, len(sample.token_ids), finish)
        return [
            ChatResult([done[c, i] for i in range(params.n)], self.model_id)
            for c in range(len(conversations))
        ]
