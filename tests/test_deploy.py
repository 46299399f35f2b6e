"""The deployment files agree with the code, and every dashboard query returns data.

The end-to-end test runs the embedded stack (broker, PostgreSQL, the five services) on a tiny
run, with a real Prometheus (Debian package `prometheus`, installed by deploy/check.sh) scraping
the services under the job names of deploy/prometheus/prometheus.yml. Each PromQL query of each
dashboard must then return a finite value for the time the run took, and each SQL query must run
on the schema and return the run's evaluation rows.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from conftest import POSTGRES, create_schema
from kafka import KafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from dualphase.broker import free_port
from dualphase.embedded import embedded_stack
from shared.core.bus import Publisher, topic_name
from shared.core.db import make_engine, make_sessionmaker
from shared.core.messages import PROBLEMS, SERVICES
from shared.core.runs import ProblemSpec, run_progress, submit_run
from shared.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Grafana fills these in; a window of many 1 s scrapes stands in for them.
GRAFANA_MACROS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "1h", "$run": ".*"}
# Metrics of the gpu profile only: vLLM's servers and the DCGM exporter. No GPU here, so their
# panels cannot show data in the run below; their names are checked against vLLM's and DCGM's
# documentation instead (docs/operations.md).
GPU_ONLY = ("vllm:", "DCGM_")
# Variables compose itself reads from .env, not used in compose.yaml.
COMPOSE_OWN = {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}
RUN_TIMEOUT_S = 900


def dashboard_targets(kind: str) -> list[tuple[str, dict]]:
    """(where, target) for every target of every panel whose datasource is of `kind`."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if kind in target["datasource"]["type"]:
                    found.append((f"{path.name}: {panel['title']} [{target['refId']}]", target))
    return found


def promql(expr: str) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return expr


# --- the files agree with each other and with the code -------------------------------------


def test_env_example_documents_exactly_the_variables_compose_uses() -> None:
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "compose.yaml").read_text()))
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used - documented == set(), "used in compose.yaml, missing from .env.example"
    assert documented - used - COMPOSE_OWN == set(), "in .env.example, unused by compose.yaml"


def test_scrape_jobs_and_the_dockerfile_use_the_service_ports_of_the_settings() -> None:
    settings = Settings()
    dockerfile = (ROOT / "Dockerfile").read_text()
    jobs = {
        job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    }
    for name in SERVICES:
        port = getattr(settings, name).port
        (sd,) = jobs[name]["dns_sd_configs"]
        assert (sd["names"], sd["port"]) == ([name], port), f"prometheus.yml job {name}"
        # The Dockerfile's stage for the service: its port (and the health check's), its command.
        stage = dockerfile.split(f"\nFROM app AS {name}\n")[1].split("\nFROM ")[0]
        assert f"EXPOSE {port}\n" in stage, f"Dockerfile stage {name} must expose {port}"
        assert f"ENV STATUS_PORT={port}\n" in stage, f"Dockerfile stage {name}: health check port"
        assert f'CMD ["python", "-m", "{name}_svc"]' in stage


def test_dashboard_queries_name_metrics_that_the_services_define() -> None:
    for name in SERVICES:  # importing a service's modules registers its metrics
        importlib.import_module(f"{name}_svc.app")
    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["_sum", "_count", ""],
    }
    defined = {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in suffixes.get(family.type, [""])
    }
    for where, target in dashboard_targets("prometheus"):
        for metric in re.findall(r"\bdualphase_\w+", target["expr"]):
            assert metric in defined, f"{where}: no service defines metric {metric}"


def test_dashboard_sql_queries_run_on_the_schema(pg_url: str) -> None:
    engine = create_engine(pg_url)
    targets = dashboard_targets("postgres")
    assert targets, "the eval results panel (Postgres) is missing"
    with engine.connect() as conn:
        for where, target in targets:
            try:
                conn.execute(text(target["rawSql"])).fetchall()
            except Exception as exc:  # name the panel whose SQL broke
                pytest.fail(f"{where}: {exc}")
    engine.dispose()


def test_grafana_reads_the_database_through_a_role_that_cannot_write() -> None:
    # As compose does it: the init script when the database is created, the migrations after.
    admin = POSTGRES.replace("postgresql+psycopg", "postgresql") + "/postgres"
    database = f"dualphase_ro_{uuid.uuid4().hex[:8]}"

    def sql(statement: str) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(statement)

    sql("DROP ROLE IF EXISTS grafana_reader")  # left by an interrupted earlier run
    sql(f'CREATE DATABASE "{database}"')
    try:
        subprocess.run(
            ["bash", str(ROOT / "deploy" / "postgres" / "grafana-reader.sh")],
            env={
                **os.environ,
                "PGHOST": "127.0.0.1",
                "POSTGRES_USER": "postgres",
                "POSTGRES_DB": database,
                "GRAFANA_DB_PASSWORD": "secret",
            },
            check=True,
        )
        create_schema(f"{POSTGRES}/{database}")
        reader = create_engine(
            POSTGRES.replace("postgres@", "grafana_reader:secret@") + "/" + database
        )
        with reader.connect() as conn:
            for _, target in dashboard_targets("postgres"):
                conn.execute(text(target["rawSql"])).fetchall()  # reads what the panels read
        for statement in ("DELETE FROM eval_results", "DROP TABLE eval_results"):
            with (
                reader.connect() as conn,
                pytest.raises(ProgrammingError, match="permission|must be owner"),
            ):
                conn.execute(text(statement))
        reader.dispose()
    finally:
        sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        sql("DROP ROLE IF EXISTS grafana_reader")


def tool(name: str) -> str:
    """A Prometheus binary (the Debian package); skipped where absent, except in CI."""
    binary = shutil.which(name)
    if binary is None:
        message = f"no {name} binary: deploy/check.sh installs it (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def test_every_alert_fires_in_its_promtool_unit_test() -> None:
    rules = PROMETHEUS_YML.parent
    tested = yaml.safe_load((rules / "alerts.test.yml").read_text())["tests"]
    alerts = {
        r["alert"]
        for g in yaml.safe_load((rules / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    firing = {
        case["alertname"] for t in tested for case in t["alert_rule_test"] if case["exp_alerts"]
    }
    assert firing == alerts, "every alert needs a test case where it fires"
    result = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts.test.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- every query returns data from a real Prometheus scraping the running stack -----------


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus server on a free port; yields its URL and the config file to fill in."""
    binary = tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text("scrape_configs: []\n")
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ok(f"{url}/-/ready"):
            assert proc.poll() is None, f"prometheus exited; see {tmp_path / 'prometheus.log'}"
            assert time.monotonic() < deadline, "prometheus not ready after 60 s"
            time.sleep(0.5)
        yield url, config
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).is_success
    except httpx.HTTPError:
        return False


def scrape_config(settings: Settings) -> dict:
    """deploy/prometheus/prometheus.yml with its Docker DNS targets swapped for local ports."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in SERVICES:
            port = getattr(settings, job["job_name"]).port
            jobs.append(
                {
                    "job_name": job["job_name"],
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                }
            )
    config["scrape_configs"] = jobs
    return config


def tiny_run_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, hub_copy: Path
) -> None:
    """Settings for a whole run in minutes on a CPU, set in the environment the services get."""
    env = {
        "COMMON__DATA_DIR": str(tmp_path / "data"),
        "COMMON__DATABASE_URL": pg_url,
        "COMMON__TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}-",
        "COMMON__PARTITIONS": "2",
        "COMMON__SESSION_TIMEOUT_MS": "6000",  # Tansu's group joins take about half of it
        "COMMON__RETRY_BACKOFF_S": "0.05",
        "GENERATOR__MAX_NEW_TOKENS": "24",
        "INFERENCE__BATCH_SIZE": "4",
        "INFERENCE__THREADS": "1",  # five services share two cores
        "TRAINER__THREADS": "1",
        "SAMPLER__SCHEDULE": "[1, 1]",
        "TRAINER__PRESET": "cpu-tiny",
        "TRAINER__SFT__MAX_STEPS": "1",
        "EVAL__BENCHMARKS": '["gsm8k"]',
        "DATA__LOCAL_DIR": str(hub_copy),  # GSM8K from local copies in the hub's layout
        "DATA__CACHE_DIR": str(tmp_path / "datasets"),
        "EVAL__LIMIT": "2",
        "EVAL__SAMPLES": "1",
        "EVAL__MAX_NEW_TOKENS": "16",
        "EVAL__BASELINE_MODES": "[]",
    }
    for name in SERVICES:
        env[f"{name.upper()}__PORT"] = str(free_port())
    for key, value in env.items():
        monkeypatch.setenv(f"DUALPHASE_{key}", value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


STRICT_RULES = ["not_truncated", "explicit_answer", "boxed_answer", "length", "has_checking_steps"]
EASY_PROBLEMS = [
    ("What is 10 + 10?", "20"),
    ("What is 100 + 100?", "200"),
    ("What is 5 + 5?", "10"),
    ("Tom has 3 apples and gets 2 more. How many apples does Tom have?", "5"),
    ("What is 3 + 4?", "7"),
    ("Sam has 10 coins and gives away 5. How many coins does Sam have?", "5"),
]


@pytest.mark.slow
def test_every_dashboard_query_returns_data_from_prometheus_scraping_a_run(
    prometheus: tuple[str, Path],
    own_pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hub_copy: Path,
) -> None:
    prom_url, prom_config = prometheus
    tiny_run_env(monkeypatch, tmp_path, own_pg_url, hub_copy)
    # The training panels need a shard with rows, so the run needs accepted samples: easy problems
    # (the tiny model gets each right in 0-3 of 8 samples of 24 tokens), more phase-2 samples,
    # none of the rules that 24 tokens rarely pass (the rule panels keep the other two), and
    # phase 1 keeps its initial-right dialogues although wrong-then-right ones are rare.
    monkeypatch.setenv("DUALPHASE_SAMPLER__SCHEDULE", "[4, 4]")
    monkeypatch.setenv("DUALPHASE_SAMPLER__BALANCE_MIN_RIGHT", "3")
    monkeypatch.setenv("DUALPHASE_VERIFIER__DISABLED_RULES", json.dumps(STRICT_RULES))
    # The run gauges are set on each reconciler pass, and only while the run is running: at the
    # default 30 s a run of about a minute (a fast CPU) can fall between two passes (CI did once).
    monkeypatch.setenv("DUALPHASE_CONTROL__RECONCILE_INTERVAL_S", "2")
    settings = Settings()
    prom_config.write_text(yaml.safe_dump(scrape_config(settings)))
    httpx.post(f"{prom_url}/-/reload", timeout=10).raise_for_status()
    started = time.time()
    with embedded_stack(settings):
        sessions = make_sessionmaker(make_engine(own_pg_url))
        problems = [
            ProblemSpec(f"easy-{i}", question, answer, "synthetic")
            for i, (question, answer) in enumerate(EASY_PROBLEMS)
        ]
        run_id = submit_run(
            settings, sessions, Publisher(settings.common), problems[:3], problems[3:], seed=3
        )
        # One message that does not parse, so the dead-letter panels have something to show.
        producer = KafkaProducer(bootstrap_servers=settings.common.kafka_bootstrap)
        producer.send(topic_name(settings.common, PROBLEMS), key=b"bad", value=b"{not json")
        producer.flush()
        producer.close()

        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not all(done >= total for done, total in run_progress(sessions, run_id).values()):
            assert time.monotonic() < deadline, f"run not done: {run_progress(sessions, run_id)}"
            time.sleep(2)
        time.sleep(5)  # a few more scrapes of the final counters

        missing = [
            f"{where}: {target['expr']}"
            for where, target in dashboard_targets("prometheus")
            if not any(name in target["expr"] for name in GPU_ONLY)
            and not _has_finite_value(prom_url, promql(target["expr"]), started)
        ]
        assert missing == [], "queries without data:\n" + "\n".join(missing)

    with create_engine(own_pg_url).connect() as conn:
        for where, target in dashboard_targets("postgres"):
            rows = conn.execute(text(target["rawSql"])).mappings().all()
            assert any(row["run_id"] == run_id for row in rows), f"{where}: no row of the run"


def _has_finite_value(prom_url: str, expr: str, start: float) -> bool:
    """Whether the query has at least one finite point between `start` and now."""
    response = httpx.get(
        f"{prom_url}/api/v1/query_range",
        params={"query": expr, "start": start, "end": time.time(), "step": "1s"},
        timeout=30,
    )
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    return any(
        math.isfinite(float(value))
        for series in body["data"]["result"]
        for _, value in series["values"]
    )
