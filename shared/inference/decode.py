"""Continuous batching for the in-process transformers backend.

``generate`` keeps a padded batch together until its longest row ends: a row that stopped after
20 tokens is still computed while another runs on to 500. Here a row leaves the batch at the step
it ends (its KV-cache row is dropped), and once a quarter of the places are free the waiting rows
are prefilled and merged in: their caches are left-padded to the batch's length and the attention
mask hides the padding, so a row's tokens do not depend on the rows beside it. Each row draws its
tokens with its own generator (seeded per sample), as ``SeededSampler`` does for ``generate``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from shared.core.messages import SamplingParams
from shared.inference.hardware import rethink_threads
from shared.inference.stops import answer_line_ended


def draw(
    scores: torch.Tensor, generators: list[torch.Generator], temperature: float, top_p: float
) -> torch.Tensor:
    """One token per row of ``scores``, row r drawn with ``generators[r]``."""
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        sorted_probs[sorted_probs.cumsum(-1) - sorted_probs >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.cat(
        [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)]
    )


@dataclass
class Row:
    prompt: list[int]
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)  # generated so far


@dataclass
class Batch:
    rows: list[Row]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, positions]: 1 for a token, 0 for left padding
    logits: torch.Tensor  # [rows, vocabulary]: of each row's next token


class Ends:
    """Whether a row is done after its last token: an end-of-sequence token, the token budget, a
    stop string, or (if asked) a line stating the final answer that has ended."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.params = params
        # A stop string that first appears now ends within the last token and spans at most this
        # many tokens (every token but the end-of-sequence ones decodes to at least a character).
        self.tail = max((len(s) for s in params.stop), default=0) + 1

    def __call__(self, ids: list[int]) -> bool:
        if ids[-1] in self.eos_ids or len(ids) >= self.params.max_new_tokens:
            return True
        if self.params.stop:
            tail = self.tokenizer.decode(ids[-self.tail :])
            if any(s in tail for s in self.params.stop):
                return True
        return self.params.stop_after_answer and answer_line_ended(self.tokenizer, ids)


def generate(
    model: Any,
    prompts: list[list[int]],
    seeds: list[int],
    params: SamplingParams,
    batch_size: int,
    ends: Ends,
    pad_id: int,
) -> list[list[int]]:
    """The generated ids of each prompt (row ``r`` seeded ``seeds[r]``), at most ``batch_size``
    rows decoding at once."""
    device = model.device
    rows = [
        Row(p, torch.Generator(device).manual_seed(s) if params.temperature > 0 else None)
        for p, s in zip(prompts, seeds, strict=True)
    ]
    waiting = deque(rows)
    # Merging copies the whole cache, so waiting rows come in a quarter of a batch at a time.
    refill_at = max(1, batch_size // 4)
    batch: Batch | None = None
    with torch.inference_mode():
        while waiting or batch:
            rethink_threads()  # an "idle" job takes a core that another left since it started
            free = batch_size - (len(batch.rows) if batch else 0)
            if waiting and (batch is None or free >= refill_at):
                entering = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                new = _prefill(model, entering, pad_id)
                batch = new if batch is None else _merge(batch, new)
            if params.temperature > 0:
                generators = [row.generator for row in batch.rows]
                tokens = draw(batch.logits, generators, params.temperature, params.top_p)
            else:
                tokens = batch.logits.argmax(-1)
            live = []
            for k, (row, token) in enumerate(zip(batch.rows, tokens.tolist(), strict=True)):
                row.ids.append(token)
                if not ends(row.ids):
                    live.append(k)
            if not live:
                batch = None
                continue
            if len(live) < len(batch.rows):
                _keep(batch, live)
                tokens = tokens[live]
            _step(model, batch, tokens)
    return [row.ids for row in rows]


def _forward(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, positions: torch.Tensor
) -> torch.Tensor:
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,  # the next token's logits only: a prompt's would take gigabytes
    )
    return out.logits[:, -1]


def _prefill(model: Any, rows: list[Row], pad_id: int) -> Batch:
    # The n samples of one prompt enter side by side: each distinct prompt is prefilled once and
    # its cache copied to its rows (a third of phase-2 sampling's time went to prefill).
    distinct: dict[tuple[int, ...], int] = {}
    owner = [distinct.setdefault(tuple(row.prompt), len(distinct)) for row in rows]
    length = max(len(prompt) for prompt in distinct)
    pads = [length - len(prompt) for prompt in distinct]
    ids = torch.tensor([[pad_id] * p + list(q) for p, q in zip(pads, distinct, strict=True)])
    mask = torch.tensor([[0] * p + [1] * (length - p) for p in pads])
    ids, mask = ids.to(model.device), mask.to(model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # padding does not count
    cache = DynamicCache()
    logits = _forward(model, ids, mask, cache, positions)
    if len(distinct) < len(rows):
        index = torch.tensor(owner, device=model.device)
        cache.batch_select_indices(index)
        mask, logits = mask[index], logits[index]
    return Batch(rows, cache, mask, logits)


def _merge(a: Batch, b: Batch) -> Batch:
    """One batch of both: the shorter one's cache and mask left-padded to the longer's length."""
    length = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
        la.keys = torch.cat([_left_pad(la.keys, length, -2), _left_pad(lb.keys, length, -2)])
        la.values = torch.cat([_left_pad(la.values, length, -2), _left_pad(lb.values, length, -2)])
    mask = torch.cat([_left_pad(a.mask, length, -1), _left_pad(b.mask, length, -1)])
    return Batch(a.rows + b.rows, a.cache, mask, torch.cat([a.logits, b.logits]))


def _left_pad(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    # F.pad takes (left, right) pairs from the last dimension backwards.
    pad = [0, 0] * (-dim - 1) + [length - x.shape[dim], 0]
    return F.pad(x, pad)


def _keep(batch: Batch, live: list[int]) -> None:
    """Only the rows ``live`` stay; positions that are padding in all of them are dropped, so
    attention spans no more than the longest live row."""
    index = torch.tensor(live, device=batch.mask.device)
    batch.cache.batch_select_indices(index)
    batch.rows = [batch.rows[k] for k in live]
    batch.mask = batch.mask[index]
    first = int(batch.mask.any(0).int().argmax())
    if first:
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        batch.mask = batch.mask[:, first:]


def _step(model: Any, batch: Batch, tokens: torch.Tensor) -> None:
    batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
    positions = batch.mask.sum(-1, keepdim=True) - 1
    batch.logits = _forward(model, tokens[:, None], batch.mask, batch.cache, positions)
