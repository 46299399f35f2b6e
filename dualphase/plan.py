"""What a run would do, printed before anything starts (`dualphase run --dry-run`): the data and
its counts, the model and how it is served, the token budgets against its context, the training
and its memory estimate per GPU, the evaluation."""

from __future__ import annotations

from shared.core.budgets import eval_errors, generator_errors, training_warnings
from shared.core.settings import Settings
from shared.inference.memory import model_shape, plan_errors, training_memory
from shared.inference.model import context_length, resolve_model

# The plan reads the model's config.json only; offline, a model not prepared yet has none here.
MISSING = (
    "the model's config is not here (HF_HUB_OFFLINE=0 fetches its config.json; "
    "`dualphase model prepare` the whole model)"
)


def plan_lines(settings: Settings, data: list[str]) -> list[str]:
    """The plan as lines of text; ``data`` describes the problems (source and counts)."""
    inf, gen, sam, ev = settings.inference, settings.generator, settings.sampler, settings.eval
    lines = ["data:", *(f"  {line}" for line in data)]
    served = f", served by `{inf.serve_command}`" if inf.serve_command else ""
    lines += [
        f"model: {inf.model} ({inf.backend} backend{served}, dtype {inf.dtype})",
        f"generation: {gen.max_new_tokens} tokens a turn at temperature {gen.temperature}; "
        f"phase 2 rounds {sam.schedule}, keep {sam.keep_k} a problem, {sam.mode} mode, "
        f"{sam.phases} phase(s); batches of {inf.batch_size}, "
        f"{inf.max_concurrency} requests in flight",
    ]
    lines += _budgets(settings)
    lines += _training(settings)
    baselines = ", ".join(ev.baseline_modes) or "none"
    models = ", ".join(f"{b.name} ({b.model}, {b.mode})" for b in ev.baseline_models) or "none"
    lines.append(
        f"evaluation: {', '.join(ev.benchmarks)}; {ev.samples} sample(s) a problem at "
        f"temperature {ev.temperature}, {ev.max_new_tokens} tokens; modes {', '.join(ev.modes)}; "
        f"baselines on M0: {baselines}; baseline models: {models}"
    )
    return lines


def _budgets(settings: Settings) -> list[str]:
    try:
        context = context_length(settings.inference)
    except OSError:
        return [f"token budgets: not checked, {MISSING}"]
    if context is None:
        return ["token budgets: the backend sets no context limit"]
    errors = generator_errors(settings, context) + eval_errors(settings, context)
    if not errors:
        return [f"token budgets: every stage fits the model's context of {context} tokens"]
    return [f"token budgets: ERROR {error}" for error in errors]


def _training(settings: Settings) -> list[str]:
    tr = settings.trainer
    sft = tr.sft_fields()
    kind = "LoRA" if tr.lora else "full fine-tuning"
    gpus = f"{tr.num_gpus} GPU(s)" if tr.num_gpus else "one device (CPU, or one GPU)"
    lines = [
        f"training: {kind}, preset {tr.preset}, learning rate {sft['learning_rate']}, "
        f"{sft['num_train_epochs']} epoch(s), rows of up to {sft['max_length']} tokens, "
        f"packing {sft['packing']}, on {gpus}",
        *(f"  warning: {w}" for w in training_warnings(settings)),
    ]
    try:
        shape = model_shape(resolve_model(settings.inference.model, settings.inference))
    except OSError:
        return [*lines, f"  memory: not estimated, {MISSING}"]
    memory = training_memory(shape, tr)
    lines += [f"  memory: {line.strip()}" for line in memory.lines()]
    lines.append(f"  {shape.parameters:,} parameters; trainer-svc checks this against its GPUs")
    for gib in (40.0, 80.0, 141.0):
        verdict = "fits" if not plan_errors(memory, gib) else "does NOT fit"
        lines.append(f"  on {gib:.0f} GiB GPUs: {verdict}")
    return lines
