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
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from shared.core.sections import (
    EvalSettings,
    GeneratorSettings,
    InferenceConfig,
    SamplerSettings,
    Section,
    VerifierSettings,
)
from shared.core.trainer_settings import TrainerSettings

CONFIG_ENV = "DUALPHASE_CONFIG"


class CommonSettings(Section):
    """Settings every service reads: where the broker, the database and the files are."""

    data_dir: Path = Field(
        Path(".dualphase"),
        description="Folder for the SQLite database, shards, checkpoints, reports and the "
        "embedded stack's service logs (the caches are data.cache_dir and "
        "inference.model_cache_dir).",
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
    log_level: str = Field("INFO", description="Python logging level of the services.")

    def resolved_database_url(self) -> str:
        """The database URL, with the embedded SQLite default filled in."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'dualphase.db').resolve()}"


class ControlSettings(Section):
    """control-svc: the control plane (re-sending lost work, run completion, broker-side gauges,
    the admin endpoints)."""

    port: int = Field(8106, description="HTTP port of the status app and the admin endpoints.")
    admin_token: str = Field(
        "", description="Bearer token for admin endpoints (submit, cancel). Empty disables them."
    )
    reconcile_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often the control plane looks for lost work; work is re-published once "
        "it has waited this long with its consumers idle.",
    )


class DataSettings(Section):
    """Where the benchmarks and training pools come from: public dataset ids at pinned revisions
    (the table in shared/datasets/sources.py, docs/data.md), read with `datasets.load_dataset`."""

    local_dir: Path | None = Field(
        None,
        description="Folder of local copies that override the hub: a dataset found at "
        "<local_dir>/<hub id>/, laid out as the hub lays out that repository at the pinned "
        "revision (e.g. openai/gsm8k/main/test-00000-of-00001.parquet), is read from there; "
        "the others come from cache_dir, then the hub. Unset: cache_dir, then the hub.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "dualphase" / "datasets",
        description="Writable folder where each dataset's file is kept at its revision "
        "(hub/<hub id>/<revision>/, filled by `dualphase data prepare` or the first load) and "
        "load_dataset's Arrow cache (arrow/); load_dataset writes lock files here.",
    )

    @field_validator("local_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (compose's ${VAR:-}) means no local copies."""
        return None if value == "" else value


class RunSettings(Section):
    """`dualphase run` and `dualphase submit` without a problem file: where the run's problems
    come from and how many each phase gets."""

    pool: Literal["synthetic", "deepscaler", "math"] = Field(
        "synthetic",
        description="Pool the problems are drawn from with the run seed: synthetic (the demo's "
        "arithmetic word problems, made here), deepscaler (agentica-org/DeepScaleR-Preview-"
        "Dataset, the paper's pool) or math (the MATH test problems outside MATH500); "
        "docs/data.md.",
    )
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
    control: ControlSettings = Field(default_factory=ControlSettings, description="control")
    run: RunSettings = Field(default_factory=RunSettings, description="dualphase run")
    data: DataSettings = Field(default_factory=DataSettings, description="datasets")

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
        # The environment overrides the file: a field set there is named by its variable.
        variable = "DUALPHASE_" + "__".join(str(part) for part in first["loc"]).upper()
        where = variable if variable in os.environ else source
        raise SettingsError(
            f"{where}: field '{field}': {first['msg']}, got {first.get('input')!r}{also}"
        ) from None
