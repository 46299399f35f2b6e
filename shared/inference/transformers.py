"""The ``transformers`` backend: in-process, CPU or GPU. Rows are sorted by prompt length and
decoded with continuous batching (``decode.py``), or (``batching: padded``) one ``generate`` call
per batch, each row drawing with its own seeded generator (``SeededSampler``)."""

from __future__ import annotations

import gc
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from shared.core.messages import SamplingParams
from shared.core.settings import InferenceConfig
from shared.inference import ChatResult, Completion, Conversation
from shared.inference.decode import Ends, draw, generate
from shared.inference.hardware import resolve_dtype, set_threads
from shared.inference.model import model_identity
from shared.inference.stops import answer_line_ended, apply_stops


class TransformersBackend:
    """In-process transformers: rows sorted by prompt length, decoded with continuous batching,
    or (``batching: padded``) one ``generate`` call per batch."""

    def __init__(self, model: str, cfg: InferenceConfig) -> None:
        set_threads(cfg.threads)
        self.dtype = resolve_dtype(cfg.dtype, cfg.device)
        self.device = self.dtype.device
        self.batch_size = cfg.batch_size
        self.batching = cfg.batching
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # generation continues at the right end of each row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype.torch_dtype)
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        revision = getattr(self.model.config, "_commit_hash", None)
        self.model_id = model_identity(model) + (f"@{revision}" if revision else "")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def close(self) -> None:
        del self.model  # the weights go with the last reference
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def chat(self, conversations: list[Conversation], params: SamplingParams) -> list[ChatResult]:
        prompts = [self._prompt_ids(c) for c in conversations]
        # One row per (conversation, sample); similar lengths share a batch to waste less padding.
        rows = sorted(
            ((c, i) for c in range(len(conversations)) for i in range(params.n)),
            key=lambda row: len(prompts[row[0]]),
        )
        row_prompts = [prompts[c] for c, _ in rows]
        seeds = [params.seed + i for _, i in rows]
        if self.batching == "continuous":
            ends = Ends(self.tokenizer, self.eos_ids, params)
            pad = self.tokenizer.pad_token_id
            ids = generate(self.model, row_prompts, seeds, params, self.batch_size, ends, pad)
            outputs = [self._completion(row, params) for row in ids]
        else:
            outputs = []
            for start in range(0, len(rows), self.batch_size):
                batch = slice(start, start + self.batch_size)
                outputs += self._generate(row_prompts[batch], seeds[batch], params)
        done = dict(zip(rows, outputs, strict=True))
        return [
            ChatResult([done[c, i] for i in range(params.n)], self.model_id)
            for c in range(len(conversations))
        ]

    def _prompt_ids(self, conversation: Conversation) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        # The chat template already wrote the special tokens.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _generate(
        self, prompts: list[list[int]], seeds: list[int], params: SamplingParams
    ) -> list[Completion]:
        enc = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.device)
        processors = []
        if params.temperature > 0:  # temperature 0 is greedy
            processors.append(SeededSampler(seeds, params.temperature, params.top_p, self.device))
        criteria = []
        if params.stop_after_answer:
            criteria.append(AnswerLineStop(self.tokenizer, enc["input_ids"].shape[1]))
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                stopping_criteria=criteria,
                do_sample=False,  # sampling happens in SeededSampler
                max_new_tokens=params.max_new_tokens,
                logits_processor=processors,
                stop_strings=params.stop or None,
                tokenizer=self.tokenizer,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        return [self._completion(ids, params) for ids in new_tokens]

    def _completion(self, ids: list[int], params: SamplingParams) -> Completion:
        # A finished row is filled with padding; it ends at its first end-of-sequence or pad token
        # (the end-of-sequence token counts as generated, the padding does not).
        ends = self.eos_ids | {self.tokenizer.pad_token_id}
        end = next((k for k, t in enumerate(ids) if t in ends), None)
        tokens = len(ids) if end is None else end + (ids[end] in self.eos_ids)
        text = self.tokenizer.decode(ids[:tokens], skip_special_tokens=True)
        text, stopped = apply_stops(text, params)
        finish = "stop" if end is not None or stopped else "length"
        return Completion(text=text, tokens=tokens, finish_reason=finish)


class AnswerLineStop:
    """Stopping criterion of ``generate``: a row is done once a line stating its final answer
    has ended, so the batch stops spending compute on rows whose answer is written."""

    def __init__(self, tokenizer: Any, prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        generated = input_ids[:, self.prompt_length :].tolist()
        done = [answer_line_ended(self.tokenizer, ids) for ids in generated]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class SeededSampler:
    """A logits processor that draws each row's next token with that row's own generator.

    ``generate`` shares one random stream across a batch, so a sample would depend on which other
    rows it was batched with. Here row r draws with a generator seeded ``seeds[r]``; the returned
    logits leave only the drawn token finite, so ``generate``'s greedy step picks exactly it.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: str) -> None:
        self.generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        drawn = draw(scores, self.generators, self.temperature, self.top_p)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, drawn[:, None], 0.0)
