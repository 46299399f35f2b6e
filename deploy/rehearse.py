"""A rehearsal of compose.yaml's cpu profile with podman (deploy/rehearse.sh runs it).

Builds every image the profile uses from the repository's Dockerfile, then starts the profile's
dualphase services as containers with what `docker-compose config` says of them: command, volumes
(named ones become podman volumes), read-only mounts, environment, health checks. Kafka and
PostgreSQL are the host's (the embedded broker, the machine's server with a fresh database): the
containers share the host's network and resolve `kafka` and `postgres` to 127.0.0.1. What the
rehearsal changes in their environment: the broker's and each status app's port (free ones, as
the host's ports are shared) and the tiny run's sizes (TINY). Prometheus and Grafana are left out
(registry images; tests/test_deploy.py covers them). A second generator container joins the
first one's consumer group. A tiny run goes in through `dualphase submit`; the rehearsal passes
when the run completes with M2's evaluation rows and both generators did work.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from sqlalchemy import create_engine, select, text

from dualphase.broker import free_port
from shared.core.db import CheckpointRow, EvalResult, Run, make_engine, make_sessionmaker
from shared.datasets.synthetic import make_problems

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "rehearsal"
NAME = "rehearsal"  # prefix of the containers and volumes
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
RUN_TIMEOUT_S = 1800
# What the user's .env would hold for the cpu profile (the README's values), and the secrets.
ENV = {
    "COMPOSE_PROFILES": "cpu",
    "MODEL": "embedded",
    "CONFIG": "/app/configs/demo.yaml",
    "CPU_EVAL_LIMIT": "1",
    "POSTGRES_USER": "postgres",
    "POSTGRES_DB": "dualphase_rehearsal",
    **{
        key: secrets.token_hex(8)
        for key in [
            "ADMIN_TOKEN",
            "MODEL_API_KEY",
            "POSTGRES_PASSWORD",  # unused: trust auth
            "GRAFANA_DB_PASSWORD",
            "GRAFANA_ADMIN_PASSWORD",
        ]
    },
}
# Rehearsal only: a run of minutes instead of demo.yaml's tens of minutes. The oracle arm trains
# on the problems' reference solutions, so a training job runs even when the tiny model gets
# no answer right.
TINY = {
    "DUALPHASE_INFERENCE__BATCH_SIZE": "4",
    "DUALPHASE_GENERATOR__MAX_NEW_TOKENS": "24",
    "DUALPHASE_SAMPLER__SCHEDULE": "[1, 1]",
    "DUALPHASE_SAMPLER__ORACLE": "true",
    "DUALPHASE_TRAINER__SFT__MAX_STEPS": "1",
    "DUALPHASE_EVAL__BENCHMARKS": '["gsm8k"]',
    "DUALPHASE_EVAL__MAX_NEW_TOKENS": "16",
    "DUALPHASE_CONTROL__RECONCILE_INTERVAL_S": "10",  # notices the run's end sooner
}


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"== {time.monotonic() - STARTED:4.0f} s  {message}", flush=True)


def sh(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, **kwargs)


def compose_services(env_file: Path) -> dict[str, dict]:
    """The services COMPOSE_PROFILES=cpu starts that are built here (not the registry images)."""
    config = sh(
        "docker-compose", "-f", str(ROOT / "compose.yaml"), "--env-file", str(env_file), "config",
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {
        name: spec
        for name, spec in yaml.safe_load(config)["services"].items()
        if "build" in spec and "cpu" in spec.get("profiles", ["cpu"])
    }


def pip_settings() -> tuple[list[str], str]:
    """This machine's pip configuration for the builds: a pip.conf and mounts of what it names.

    Only package registries are reachable from here, through this machine's CA bundle, and torch's
    CPU build lies in a local wheel folder: the images' pip needs the same settings and files.
    They are mounted under /run/host (a CA bundle at its own path would be overwritten when apt
    installs ca-certificates); a folder with its parent, since a local index's files lie beside
    it. Returns podman's mount options and the index that stands in for TORCH_INDEX.
    """
    listed = sh(
        sys.executable, "-m", "pip", "config", "list", capture_output=True, text=True
    ).stdout.splitlines()
    settings: dict[str, str] = {}
    for line in listed:  # ":env:.cert='/etc/ssl/...'" (PIP_CERT, which wins) or "global.cert=..."
        key, value = line.split("=", 1)
        settings.setdefault(key.split(".", 1)[1], value.strip("'"))
    mounts = set()

    def inside(value: str) -> str:
        scheme = "file://" if value.startswith("file:///") else ""
        path = Path(value.removeprefix(scheme))
        if not path.is_absolute():
            return value  # a URL
        mounts.add(path if path.is_file() else path.parent)
        return f"{scheme}/run/host{path}"

    conf = [f"{key} = {' '.join(map(inside, value.split()))}" for key, value in settings.items()]
    (WORK / "pip.conf").write_text("\n".join(["[global]", *conf]) + "\n")
    options = ["-v", f"{WORK / 'pip.conf'}:/etc/pip.conf:ro"]
    for path in sorted(mounts):
        options += ["-v", f"{path}:/run/host{path}:ro"]
    return options, settings.get("index-url", "https://pypi.org/simple")


def build(services: dict[str, dict], base: str) -> None:
    """Each image once, from compose's build section, on the local base; the torch index of
    TORCH_INDEX is unreachable here, the local wheel folder has its CPU build."""
    mounts, index = pip_settings()
    images = {spec["image"]: spec["build"] for spec in services.values()}
    for image, spec in images.items():
        args = {**spec.get("args", {}), "BASE_IMAGE": base, "TORCH_INDEX": index}
        say(f"build {image} {spec['args']}")
        sh(
            "podman", "build", "--format", "docker", "--network", "host", *mounts,
            "-f", str(Path(spec["context"]) / spec.get("dockerfile", "Dockerfile")),
            *[f"--build-arg={k}={v}" for k, v in args.items()], "-t", image, spec["context"],
        )  # fmt: skip
    # The images of an earlier rehearsal that these replaced (GBs each).
    sh("podman", "image", "prune", "-f", stdout=subprocess.DEVNULL)


def run_options(spec: dict, extra_env: dict[str, object]) -> list[str]:
    """podman run's options for a compose service: host network, its volumes and environment."""
    options = ["--network", "host", "--add-host", "kafka:127.0.0.1", "--add-host",
               "postgres:127.0.0.1"]  # fmt: skip
    for volume in spec.get("volumes", []):
        source, target, mode = (volume.split(":") + ["rw"])[:3]
        named = not source.startswith("/")
        options += ["-v", f"{NAME}_{source}:{target}:{mode}" if named else volume]
    for key, value in {**spec.get("environment", {}), **TINY, **extra_env}.items():
        options += ["-e", f"{key}={value}"]
    if "healthcheck" in spec:  # compose's own health check, over the image's
        test = spec["healthcheck"]["test"]
        options += ["--health-cmd", json.dumps(test[1:]) if test[0] == "CMD" else test[1]]
    return options


def logs(container: str) -> str:
    out = subprocess.run(["podman", "logs", "--tail", "60", container], capture_output=True)
    return out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")


def fail(message: str, containers: list[str]) -> None:
    for container in containers:
        print(f"--- {container}\n{logs(container)}", file=sys.stderr)
    sys.exit(f"REHEARSAL FAILED: {message}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for(what: str, check, containers: list[str], timeout_s: float) -> None:
    """Until ``check()`` holds; fails early when one of the containers has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except OSError:
            pass  # not listening yet
        exited = sh("podman", "ps", "-a", "--filter", "status=exited", "--format", "{{.Names}}",
                    capture_output=True, text=True).stdout.split()  # fmt: skip
        if set(exited) & set(containers):
            fail(f"waiting for {what}: {' '.join(set(exited) & set(containers))} exited", exited)
        if time.monotonic() > deadline:
            fail(f"{what}: not after {timeout_s:.0f} s", containers)
        time.sleep(5)


def hub_copy(datasets: Path) -> Path:
    """DATASETS_LOCAL_DIR: the benchmark files of ``datasets`` laid out as the dataset hub lays
    them out, the local copies compose's `data` service reads (no hub is reachable here); made as
    the tests make theirs (tests/conftest.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest

    return conftest.write_hub_copy(WORK / "hub", datasets)


def remove_containers() -> None:
    """Every container of this rehearsal, and of an earlier one; killed, as the run is over."""
    names = sh("podman", "ps", "-aq", "--filter", f"name=^{NAME}-", capture_output=True, text=True)
    if names.stdout.split():
        sh("podman", "rm", "-f", "-t", "0", *names.stdout.split(), stdout=subprocess.DEVNULL)


def fresh_database(name: str) -> None:
    with create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="base image of the builds")
    parser.add_argument(
        "--datasets",
        required=True,
        help="folder of the benchmark files (benchmarks/<name>/test.jsonl, train/*.jsonl)",
    )
    options = parser.parse_args()
    env_file = WORK / ".env"
    env = {**ENV, "DATASETS_LOCAL_DIR": str(hub_copy(Path(options.datasets)))}
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    services = compose_services(env_file)
    build(services, options.base)
    say("images built")

    # A fresh stack: no containers, volumes or database of an earlier rehearsal.
    remove_containers()
    for volume in {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}:
        if not volume.startswith("/"):
            subprocess.run(
                ["podman", "volume", "rm", "-f", f"{NAME}_{volume}"], capture_output=True
            )
    for spec in services.values():  # as Docker does, a missing host folder is created
        for volume in spec.get("volumes", []):
            if volume.startswith("/"):
                Path(volume.split(":")[0]).mkdir(parents=True, exist_ok=True)
    fresh_database(ENV["POSTGRES_DB"])
    broker_log = (WORK / "broker.log").open("w")
    # The containers share the host's ports (compose gives each its own network): the broker and
    # every status app on a free port, so that no other process on this host answers for them.
    broker_port = free_port()
    bus = {"DUALPHASE_COMMON__KAFKA_BOOTSTRAP": f"kafka:{broker_port}"}
    broker = subprocess.Popen(
        [ROOT / ".venv/bin/dualphase", "broker", "--port", str(broker_port)],
        stdout=broker_log,
        stderr=broker_log,
    )
    containers: list[str] = []
    try:
        # One-shot services first (migrate, model-cpu...), each after the ones it depends on; the
        # long-running services depend on their success.
        pending = [name for name, spec in services.items() if spec.get("restart") == "no"]
        while pending:
            name = next(
                n for n in pending if not set(services[n].get("depends_on", {})) & {*pending}
            )
            pending.remove(name)
            spec = services[name]
            say(f"{name}: {' '.join(spec['command'])}")
            done = subprocess.run(
                ["podman", "run", "--name", f"{NAME}-{name}", *run_options(spec, bus),
                 spec["image"], *spec["command"]], capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                fail(f"{name} exited {done.returncode}", [f"{NAME}-{name}"])
        started = [(n, s) for n, s in services.items() if s.get("restart") != "no"]
        started.append(("generator-cpu-2", services["generator-cpu"]))  # the same group
        ports: dict[str, int] = {}
        for name, spec in started:
            containers.append(f"{NAME}-{name}")
            ports[name] = free_port()
            service = spec["build"]["args"]["SERVICE"]
            own = {f"DUALPHASE_{service.upper()}__PORT": ports[name], "STATUS_PORT": ports[name]}
            sh("podman", "run", "-d", "--name", containers[-1], *run_options(spec, {**bus, **own}),
               spec["image"], *spec.get("command", []), stdout=subprocess.DEVNULL)  # fmt: skip
        say(f"started {' '.join(containers)}")
        generators = [f"http://127.0.0.1:{ports[n]}" for n in ("generator-cpu", "generator-cpu-2")]

        def ready() -> bool:
            # Every container healthy by its health check (the image's asks the service's port),
            # and both generators hold partitions: the group has formed before the run starts.
            healthy = all(
                subprocess.run(["podman", "healthcheck", "run", c], capture_output=True).returncode
                == 0
                for c in containers
            )
            return healthy and all(
                all(c["assigned_partitions"] for c in get_json(f"{g}/status")["consumers"])
                for g in generators
            )

        wait_for("healthy services, both generators in the group", ready, containers, 600)

        # Their ids put the phase-1 jobs on partitions 5 and 2 of 8, the phase-2 ones on 0 and
        # 6: each generator's half of the partitions holds work of both phases.
        problems = WORK / "problems.jsonl"
        problems.write_text(
            "".join(
                json.dumps({"id": p.id, "problem": p.question, "solution": p.solution}) + "\n"
                for p in make_problems(4, seed=5)
            )
        )
        submitted = subprocess.run(
            [ROOT / ".venv/bin/dualphase", "submit", "--problems", problems, "--phase1", "2",
             "--phase2", "2", "--url", f"http://127.0.0.1:{ports['control']}",
             "--env-file", env_file], capture_output=True, text=True,
        )  # fmt: skip
        if submitted.returncode:
            fail(f"dualphase submit: {submitted.stderr}", [f"{NAME}-control"])
        run_id = submitted.stdout.strip()
        say(f"submitted run {run_id}")

        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{ENV['POSTGRES_DB']}")
        sessions = make_sessionmaker(engine)

        def run_complete() -> bool:
            with sessions() as s:
                failed = s.scalars(
                    select(CheckpointRow).where(
                        CheckpointRow.run_id == run_id, CheckpointRow.status == "failed"
                    )
                ).all()
                if failed:
                    trainers = [c for c in containers if "trainer" in c]
                    fail(f"checkpoint {failed[0].stage} failed: {failed[0].error}", trainers)
                return s.get_one(Run, run_id).status == "complete"

        wait_for(f"run {run_id} complete", run_complete, containers, RUN_TIMEOUT_S)

        with sessions() as s:
            stages = {
                c.id: c.stage
                for c in s.scalars(select(CheckpointRow).where(CheckpointRow.run_id == run_id))
            }
            rows = s.scalars(select(EvalResult).where(EvalResult.run_id == run_id)).all()
        say("eval_results: stage checkpoint_id benchmark mode problems accuracy mean_tokens")
        for r in rows:
            stage = stages.get(r.checkpoint_id, "M0")
            print(f"   {stage} {r.checkpoint_id} {r.benchmark} {r.mode} {r.problems} "
                  f"{r.accuracy:.3f} {r.mean_tokens:.1f}")  # fmt: skip
        if "M2" not in {stages.get(r.checkpoint_id) for r in rows}:
            fail("no evaluation rows of M2", containers)

        # The work of one consumer group, shared: each generator container took some of it.
        processed = [
            {c["topic"]: c["processed"] for c in get_json(f"{g}/status")["consumers"]}
            for g in generators
        ]
        say(f"messages processed, per topic, by the two generator containers: {processed}")
        if not all(sum(p.values()) for p in processed):
            fail("one generator container did no work", [c for c in containers if "generator" in c])
        print(f"REHEARSAL PASSED in {time.monotonic() - STARTED:.0f} s")
    finally:
        remove_containers()
        broker.terminate()


if __name__ == "__main__":
    main()
