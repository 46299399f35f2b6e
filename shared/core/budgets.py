"""Token budgets, checked when a service starts: what each stage may put in one context.

A dialogue's third turn carries the two turns before it plus its own budget; a Think Twice or
self-rewarding evaluation carries earlier answers likewise. When the model's context (or the
trainer's ``max_length``) cannot hold that, generation fails or training rows are cut mid-way,
late in a run. The services check at start-up instead and name the settings to change.
"""

from __future__ import annotations

import logging

from shared.core.settings import Settings

log = logging.getLogger(__name__)

# Turns an evaluation mode holds in one context: its answers so far plus the one being written.
EVAL_TURNS = {"base": 1, "think-twice": 2, "self-rewarding": 3}


def _where(reserve: int, context: int) -> str:
    return f"the model's context ({context} tokens, inference.prompt_tokens {reserve} reserved)"


def generator_errors(settings: Settings, context: int) -> list[str]:
    """What the generator's budget needs beyond ``context`` tokens."""
    g, reserve = settings.generator, settings.inference.prompt_tokens
    if (need := 3 * g.max_new_tokens + reserve) <= context:
        return []
    return [
        f"generator.max_new_tokens {g.max_new_tokens}: a dialogue's third turn holds 3 x "
        f"{g.max_new_tokens} + {reserve} = {need} tokens, over {_where(reserve, context)}"
    ]


def eval_errors(settings: Settings, context: int) -> list[str]:
    """What the evaluator's budget needs beyond ``context`` tokens, in each mode it runs."""
    e, reserve = settings.eval, settings.inference.prompt_tokens
    errors = []
    for mode in sorted(set(e.modes) | set(e.baseline_modes), key=EVAL_TURNS.get):
        need = EVAL_TURNS[mode] * e.max_new_tokens + reserve
        if need > context:
            errors.append(
                f"eval.max_new_tokens {e.max_new_tokens}: mode {mode!r} holds "
                f"{EVAL_TURNS[mode]} x {e.max_new_tokens} + {reserve} = {need} tokens, "
                f"over {_where(reserve, context)}"
            )
    return errors


def training_warnings(settings: Settings) -> list[str]:
    """Training rows longer than ``trainer.sft.max_length`` would be cut: their end, where the
    answer is, would never be trained on. A warning, not an error: rows are usually shorter
    than their budgets, and TRL cuts the few that are not."""
    g, max_length = settings.generator, settings.trainer.sft_fields()["max_length"]
    turns = 3 if settings.sampler.phase1_row == "chain" else 1  # a chain holds the whole dialogue
    need = turns * g.max_new_tokens + settings.inference.prompt_tokens
    if need <= max_length:
        return []
    return [
        f"trainer.sft.max_length {max_length}: a training row may hold {turns} turn(s) of up to "
        f"generator.max_new_tokens {g.max_new_tokens} + inference.prompt_tokens "
        f"{settings.inference.prompt_tokens} = {need} tokens"
    ]


def stop_on_errors(service: str, errors: list[str]) -> None:
    """Log each error and exit: a service whose budgets do not fit must not start consuming."""
    for error in errors:
        log.error("%s: %s", service, error)
    if errors:
        raise SystemExit(f"{service}: token budgets do not fit: " + "; ".join(errors))
