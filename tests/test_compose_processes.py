"""compose.yaml's cpu profile, run as processes: what `docker compose up` would run, without Docker.

Each dualphase service of the profile is started with its own command (compose's `command`, else
its Dockerfile stage's CMD) and its own environment from compose.yaml, interpolated as compose would
(with the variables a user's .env would set). Host names map to 127.0.0.1 (Kafka to the embedded
broker, PostgreSQL to the test server) and container paths to folders here, as the volumes say.
A tiny run goes in through `dualphase submit`, as the README's GPU section does, and must reach
M1, M2 and the oracle arm with their evaluation rows; generator and eval start `transformers
serve` for each checkpoint (compose's serve command), and the server started for one model
refuses any other name, so a row written shows the checkpoint was the model served.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from dualphase.broker import free_port
from shared.core.db import (
    CheckpointRow,
    EvalResult,
    GenerationRow,
    Run,
    make_engine,
    make_sessionmaker,
)
from shared.core.messages import SERVICES
from shared.datasets.synthetic import make_problems

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 900
# Not ours: the embedded broker and the test's PostgreSQL stand in for them, and the monitoring
# is tested in test_deploy.py.
THIRD_PARTY = {"kafka", "postgres", "prometheus", "grafana"}


def interpolate(value: str, env: dict[str, str]) -> str:
    """compose's ${VAR:-default}, ${VAR:?error} and $$, with ``env`` as the .env file."""

    def variable(match: re.Match[str]) -> str:
        name, kind, word = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        assert kind != ":?", f"compose would refuse to start: {name}: {word}"
        return word or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", variable, value).replace("$$", "$")


def cpu_services(env: dict[str, str]) -> dict[str, dict]:
    """The services `COMPOSE_PROFILES=cpu docker compose up` starts, ours only."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    return {
        name: spec
        for name, spec in services.items()
        if name not in THIRD_PARTY and "gpu" not in spec.get("profiles", [])
    }


def command(spec: dict) -> list[str]:
    """compose's command, else the image's CMD, with the image's programs taken from here."""
    if "command" in spec:
        args = list(spec["command"])
    else:  # the CMD of the Dockerfile's stage that the build argument SERVICE names
        dockerfile = (ROOT / spec["build"].get("dockerfile", "Dockerfile")).read_text()
        stage = dockerfile.split(f"\nFROM app AS {spec['build']['args']['SERVICE']}\n")[1]
        args = json.loads(re.search(r"^CMD (\[.*\])$", stage, re.M)[1])
    program = {"python": sys.executable, "dualphase": str(BIN / "dualphase")}
    return [program.get(args[0], args[0]), *args[1:]]


def environment(spec: dict, env: dict[str, str], paths: dict[str, Path]) -> dict[str, str]:
    """The service's environment, with compose's host names and container paths mapped here."""
    out = {}
    for key, raw in spec.get("environment", {}).items():
        value = interpolate(str(raw), env)
        value = re.sub(r"\b(kafka|postgres):(\d+)", lambda m: env[f"_{m[2]}"], value)
        for inside, here in paths.items():
            if value == inside or value.startswith(inside + "/"):
                value = str(here) + value[len(inside) :]
        out[key] = value
    return out


def volume_paths(services: dict[str, dict], env: dict[str, str], tmp: Path) -> dict[str, Path]:
    """Container path -> folder here: named volumes become folders under ``tmp``, host folders
    stay themselves (relative to the repository, as compose reads them), /app is the repository."""
    paths = {"/app": ROOT}
    for spec in services.values():
        for volume in spec.get("volumes", []):
            source, target = interpolate(volume, env).split(":")[:2]
            here = (ROOT / source).resolve() if source.startswith((".", "/")) else tmp / source
            paths[target] = here
    # Longest first, so /models/hf is not taken for /models + "/hf" twice.
    return dict(sorted(paths.items(), key=lambda item: -len(item[0])))


@pytest.fixture
def stack(broker: str, own_pg_url: str, tmp_path: Path, hub_copy: Path) -> Iterator[dict]:
    """compose's cpu profile as processes; yields what the test needs to drive and read it."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "common": {
                    "topic_prefix": f"c{uuid.uuid4().hex[:8]}-",
                    "session_timeout_ms": 6000,
                    "retry_backoff_s": 0.05,
                },
                "control": {"reconcile_interval_s": 5},
                "inference": {"batch_size": 4, "threads": 1, "max_concurrency": 2},
                "generator": {"max_new_tokens": 24},
                "sampler": {"schedule": [1, 1], "oracle": True},
                "trainer": {"threads": 1, "sft": {"max_steps": 1}},
                "eval": {
                    "benchmarks": ["gsm8k"],
                    "samples": 1,
                    "max_new_tokens": 16,
                    "baseline_modes": [],
                },
            }
        )
    )
    user, database = "postgres", own_pg_url.rsplit("/", 1)[1]
    env = {  # what the user's .env would hold
        "CONFIG": str(config),
        "MODEL": "embedded",
        "CPU_EVAL_LIMIT": "1",
        "KAFKA_PARTITIONS": "2",
        "POSTGRES_USER": user,
        "POSTGRES_PASSWORD": "unused",  # trust auth
        "POSTGRES_DB": database,
        "DATASETS_LOCAL_DIR": str(hub_copy),  # the `data` service's local copies
        "ADMIN_TOKEN": uuid.uuid4().hex,
        "MODEL_API_KEY": uuid.uuid4().hex,
        "_9092": broker,
        "_5432": "127.0.0.1:" + own_pg_url.rsplit(":", 1)[1].split("/")[0],
    }
    services = cpu_services(env)
    paths = volume_paths(services, env, tmp_path)
    ports: dict[str, int] = {}
    processes: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str) -> subprocess.Popen:
        spec = services[name]
        service_env = environment(spec, env, paths)
        service = name.removesuffix("-cpu")
        if service in SERVICES:  # the processes share one host; in compose each has its own
            ports[service] = free_port()
            service_env[f"DUALPHASE_{service.upper()}__PORT"] = str(ports[service])
        service_env["DUALPHASE_COMMON__HTTP_HOST"] = "127.0.0.1"
        log = (logs / f"{name}.log").open("w")
        return subprocess.Popen(
            command(spec),
            cwd=ROOT,
            env={"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path), **service_env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    try:
        # One-shot services first, as their `service_completed_successfully` dependents wait.
        for name, spec in services.items():
            if spec.get("restart") == "no":
                code = start(name).wait(600)
                assert code == 0, f"{name} exited {code}: {(logs / f'{name}.log').read_text()}"
        for name, spec in services.items():
            if spec.get("restart") != "no":
                processes.append(start(name))
        yield {"env": env, "ports": ports, "logs": logs, "pg_url": own_pg_url, "tmp": tmp_path}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_compose_cpu_profile_as_processes_serves_each_checkpoint_to_the_m2_table(
    stack: dict,
) -> None:
    problems = stack["tmp"] / "problems.jsonl"
    # MATH's format: the gold answer is the reference solution's \\boxed{}, which the oracle
    # arm trains on.
    problems.write_text(
        "".join(
            json.dumps({"id": p.id, "problem": p.question, "solution": p.solution}) + "\n"
            for p in make_problems(4, seed=5)
        )
    )
    env_file = stack["tmp"] / ".env"
    env_file.write_text(f"ADMIN_TOKEN={stack['env']['ADMIN_TOKEN']}\n")
    control = f"http://127.0.0.1:{stack['ports']['control']}"
    deadline = time.monotonic() + 120
    while True:  # the README's command, once control-svc listens
        submitted = subprocess.run(
            [
                BIN / "dualphase",
                "submit",
                "--problems",
                problems,
                "--phase1",
                "2",
                "--phase2",
                "2",
                "--url",
                control,
                "--env-file",
                env_file,
            ],
            capture_output=True,
            text=True,
        )
        if submitted.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()

    sessions = make_sessionmaker(make_engine(stack["pg_url"]))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        with sessions() as s:
            if s.get_one(Run, run_id).status == "complete":
                break
        logs = {p.name: p.read_text()[-3000:] for p in stack["logs"].glob("*.log")}
        assert time.monotonic() < deadline, f"run {run_id} not complete; logs: {logs}"
        time.sleep(5)

    with sessions() as s:
        checkpoints = s.scalars(select(CheckpointRow).where(CheckpointRow.run_id == run_id)).all()
        evaluated = set(
            s.scalars(select(EvalResult.checkpoint_id).where(EvalResult.run_id == run_id))
        )
        phase2_models = set(
            s.scalars(
                select(GenerationRow.model).where(
                    GenerationRow.run_id == run_id, GenerationRow.phase == 2
                )
            )
        )
    stages = {c.stage: c for c in checkpoints}
    assert {"M1", "M2", "oracle"} <= set(stages), [c.stage for c in checkpoints]
    assert {c.id for c in checkpoints} <= evaluated, "a checkpoint without evaluation rows"
    assert len(evaluated) == len(checkpoints) + 1, "M0 is evaluated too"

    eval_log = (stack["logs"] / "eval-cpu.log").read_text()
    generator_log = (stack["logs"] / "generator-cpu.log").read_text()
    trained = [c for c in checkpoints if "skipped" not in c.training_config]
    assert stages["oracle"] in trained  # reference solutions always make a training set
    for checkpoint in trained:
        # The server pinned to this path served the rows written for it.
        assert f"model server for {checkpoint.path} ready" in eval_log, checkpoint.stage
    # Phase 2 sampled M1 through a server started for M1's path.
    assert f"model server for {stages['M1'].path} ready" in generator_log
    assert len(phase2_models) == 1 and stages["M1"].path.rsplit("/", 1)[1] in phase2_models.pop()
