"""The messages on every topic: versioned pydantic models, JSON on the wire, keyed by problem id.

A model's ``version`` field is its wire-format version: a consumer rejects (to the DLQ) a version
it does not know instead of guessing. Large payloads (shards, checkpoints) travel as paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Topic names (the common ``topic_prefix`` setting is put in front of them by the bus).
PROBLEMS = "problems"
DIALOGUES = "dialogues"
VERIFIED_SAMPLES = "verified-samples"
TRAINING_SHARDS = "training-shards"
CHECKPOINTS = "checkpoints"
ALL_TOPICS = [
    PROBLEMS,
    DIALOGUES,
    VERIFIED_SAMPLES,
    TRAINING_SHARDS,
    CHECKPOINTS,
]


class Message(BaseModel):
    """Base of every message: strict about unknown fields so that typos fail loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    run_id: str = Field(description="The run this message belongs to.")

    def key(self) -> str:
        """Partition key: one problem's messages stay in order on one partition."""
        return getattr(self, "problem_id", self.run_id)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class SamplingParams(BaseModel):
    """Sampling parameters, recorded with every generation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1, ge=1, description="Independent samples per conversation.")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    seed: int = Field(0, description="Base seed; sample i uses seed + i.")
    stop: list[str] = Field(default_factory=list)
    stop_after_answer: bool = Field(
        False,
        description="End each sample at the end of its first line that states a final answer "
        "('the answer is', \\boxed{}), as if that line ended with a stop string.",
    )


class ProblemJob(Message):
    """On ``problems``: a phase-1 dialogue job or a phase-2 sampling job for one problem. A job
    names what the run decides (which problem and model, how many samples, their seed); the
    generator samples with its own settings (``generator``: temperature, token budget ...).
    Version 2: version 1 carried the sampling parameters."""

    version: Literal[2] = 2  # type: ignore[assignment]
    kind: Literal["dialogue", "sample"] = Field(description="dialogue: phase 1; sample: phase 2.")
    problem_id: str
    job_id: str = Field(description="Unique per (run, problem, round): the idempotency key.")
    phase: Literal[1, 2]
    question: str
    gold: str = Field(description="Gold answer, for the verifier downstream.")
    dataset: str = Field("", description="Source dataset, for answer normalisation.")
    round: int = Field(0, ge=0, description="Phase-2 round index into the schedule.")
    model: str = Field("", description="Model to sample with; empty means the configured one.")
    n: int = Field(1, ge=1, description="Independent samples (a dialogue is one sample).")
    seed: int = Field(0, description="Seed of sample 0; sample i uses seed + i.")


class Generation(BaseModel):
    """One generated sample: all turns of a dialogue, or one single-turn solution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_id: str = Field(description="Unique per (run, problem): job id + sample index.")
    turns: list[str] = Field(description="Assistant texts: [solve, review, long CoT] or [answer].")
    tokens: list[int] = Field(description="Generated tokens per turn.")
    finish_reasons: list[Literal["stop", "length"]] = Field(
        default_factory=list,
        description="Why each turn stopped: stop (it ended on its own) or length (cut at the "
        "token budget). Empty in messages written before it was recorded.",
    )
    seed: int


class Dialogue(Message):
    """On ``dialogues``: the outputs of one job, with provenance."""

    problem_id: str
    job_id: str
    phase: Literal[1, 2]
    round: int = 0
    gold: str
    dataset: str = ""
    model: str = Field(description="Model identity: path or id plus revision or file hash.")
    prompt_version: str
    params: SamplingParams
    samples: list[Generation]


# A phase-1 dialogue's category: its first answer, then its final one, right or wrong; ? where the
# first turn was cut at its token budget before it stated an answer.
PHASE1_CATEGORIES = Literal["RR", "RW", "WR", "WW", "?R", "?W"]


class Verdict(BaseModel):
    """The grade of one sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_id: str
    initial_correct: bool | None = Field(
        None, description="Turn-1 answer right (phase 1 only; None where turn 1 stated none)."
    )
    final_correct: bool
    category: Literal[PHASE1_CATEGORIES, "R", "W"] = Field(
        description="Phase 1: turn-1 then final (RR/RW/WR/WW; ?R/?W: turn 1 was cut before it "
        "stated an answer); phase 2: R or W."
    )
    accepted: bool = Field(description="Final answer right and every rule passed.")
    failed_rules: list[str] = Field(default_factory=list, description="Names of failed rules.")
    extracted: str = Field("", description="The final answer as extracted.")


class VerifiedSamples(Message):
    """On ``verified-samples``: verdicts for one dialogue message."""

    problem_id: str
    job_id: str
    phase: Literal[1, 2]
    round: int = 0
    verdicts: list[Verdict]


class ShardFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    rows: int
    sha256: str


class ShardManifest(Message):
    """On ``training-shards``: a sealed set of shard files to train on."""

    shard_id: str
    stage: Literal["phase1", "phase2", "joint", "oracle"]
    base_model: str = Field(description="Model (or checkpoint path) training starts from.")
    parent_checkpoint_id: str = ""
    files: list[ShardFile]


# checkpoint_id of a run's base model (M0): announced when the run is submitted, so that it is
# evaluated while phase 1 generates; every later checkpoint's message names it again.
BASE_CHECKPOINT_ID = "base"
# checkpoint_id of a baseline model (``eval.baseline_models``): evaluated once per run, like M0.
BASELINE_PREFIX = "baseline:"


def baseline_checkpoint_id(name: str) -> str:
    """The checkpoint id under which the baseline model ``name`` is evaluated."""
    return f"{BASELINE_PREFIX}{name}"


class CheckpointReady(Message):
    """On ``checkpoints``: a trained model is ready for sampling and evaluation."""

    checkpoint_id: str
    stage: Literal["M0", "M1", "M2", "oracle"]
    path: str
    parent_checkpoint_id: str = ""
    shard_id: str = ""


class DeadLetter(BaseModel):
    """On ``<topic>.dlq``: a message that could not be processed, with the error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    topic: str
    partition: int
    offset: int
    key: str | None
    error: str
    value_b64: str = Field(description="The original bytes, base64.")


# The bus's one table: who consumes each topic, in which consumer group, as which message type.
# The services' consumers, the reconciler's idleness checks and the CLI's service list read it.
# One group per (service, topic): on Tansu a group that was subscribed to another topic before
# never gets partitions.
# Pipeline order, then the control plane (it consumes nothing: it re-sends lost work).
SERVICES = ["generator", "verifier", "sampler", "trainer", "eval", "control"]


@dataclass(frozen=True)
class Subscription:
    service: str  # runs as `python -m <service>_svc`
    topic: str
    group: str
    message: type[Message]


SUBSCRIPTIONS = [
    Subscription("generator", PROBLEMS, "generator", ProblemJob),
    Subscription("verifier", DIALOGUES, "verifier", Dialogue),
    Subscription("sampler", VERIFIED_SAMPLES, "sampler", VerifiedSamples),
    Subscription("sampler", CHECKPOINTS, "sampler-checkpoints", CheckpointReady),
    Subscription("trainer", TRAINING_SHARDS, "trainer", ShardManifest),
    Subscription("eval", CHECKPOINTS, "eval-checkpoints", CheckpointReady),
]
# The topic each message type is published on.
TOPIC_OF: dict[type[Message], str] = {
    ProblemJob: PROBLEMS,
    Dialogue: DIALOGUES,
    VerifiedSamples: VERIFIED_SAMPLES,
    ShardManifest: TRAINING_SHARDS,
    CheckpointReady: CHECKPOINTS,
}


def subscription(service: str, topic: str) -> Subscription:
    """The one subscription of ``service`` to ``topic``."""
    return next(s for s in SUBSCRIPTIONS if s.service == service and s.topic == topic)


def consumer_groups(topic: str) -> list[str]:
    """Every consumer group reading ``topic``."""
    return [s.group for s in SUBSCRIPTIONS if s.topic == topic]
