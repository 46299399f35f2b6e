"""Token budgets checked at start-up: the paper's config fits compose's model server, and a
budget that does not fit is refused with the settings named."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from shared.core.budgets import eval_errors, generator_errors, stop_on_errors, training_warnings
from shared.core.settings import InferenceConfig, Settings, load_settings
from shared.inference.model import context_length

ROOT = Path(__file__).resolve().parent.parent


def compose_context() -> int:
    """The context compose gives the vLLM servers by default (--max-model-len of the gpu
    services' serve command)."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    command = services["generator"]["environment"]["DUALPHASE_INFERENCE__SERVE_COMMAND"]
    assert command == services["eval"]["environment"]["DUALPHASE_INFERENCE__SERVE_COMMAND"]
    return int(re.search(r"--max-model-len \$\{\w+:-(\d+)\}", command).group(1))


@pytest.fixture
def paper(monkeypatch: pytest.MonkeyPatch) -> Settings:
    # load_settings exports DUALPHASE_CONFIG for the services it starts: undone after the test.
    monkeypatch.setenv("DUALPHASE_CONFIG", "")
    return load_settings(ROOT / "configs" / "paper.yaml")


def test_paper_config_fits_the_context_compose_serves(paper: Settings) -> None:
    assert generator_errors(paper, compose_context()) == []
    assert eval_errors(paper, compose_context()) == []
    assert training_warnings(paper) == []


def test_a_budget_over_the_context_names_the_settings_and_stops_the_service(
    paper: Settings,
) -> None:
    assert generator_errors(paper, 16384) == []
    errors = eval_errors(paper, 16384)
    assert len(errors) == 2, errors  # think-twice (2 x 8192) and self-rewarding (3 x 8192)
    assert all(e.startswith("eval.max_new_tokens 8192: mode ") for e in errors)
    assert "'self-rewarding' holds 3 x 8192 + 512 = 25088 tokens" in errors[1]
    third_turn = generator_errors(Settings(generator={"max_new_tokens": 3000}), 8192)
    assert third_turn == [
        "generator.max_new_tokens 3000: a dialogue's third turn holds 3 x 3000 + 512 = 9512 "
        "tokens, over the model's context (8192 tokens, inference.prompt_tokens 512 reserved)"
    ]
    with pytest.raises(SystemExit, match="eval-svc: token budgets do not fit: eval.max_new"):
        stop_on_errors("eval-svc", errors)


def test_training_rows_longer_than_max_length_are_warned_about() -> None:
    settings = Settings(generator={"max_new_tokens": 4096}, trainer={"sft": {"max_length": 4096}})
    [warning] = training_warnings(settings)
    assert warning.startswith("trainer.sft.max_length 4096: a training row may hold")


def test_context_length_of_the_embedded_model_and_of_an_openai_server(
    models_server: str,
) -> None:
    assert context_length(InferenceConfig(model="embedded")) is None, "transformers: no limit"
    in_process_vllm = InferenceConfig(model="embedded", backend="vllm")
    assert context_length(in_process_vllm) == 8192  # SmolLM2's config
    served = InferenceConfig(backend="openai", model="m", openai_base_url=models_server)
    assert context_length(served) == 4096
    unknown = served.model_copy(update={"model": "other"})
    assert context_length(unknown) is None, "a server that does not list the model: unchecked"
    away = served.model_copy(update={"openai_base_url": "http://127.0.0.1:9/v1"})
    assert context_length(away) is None
    # A server this service starts with a shorter context (compose: VLLM_MAX_MODEL_LEN) holds
    # that much, not what the model config says.
    started = InferenceConfig(model="embedded", backend="openai", serve_command="x {model}")
    assert context_length(started) == 8192
    assert context_length(started.model_copy(update={"max_model_len": 4096})) == 4096
    assert context_length(started.model_copy(update={"max_model_len": 65536})) == 8192


@pytest.fixture
def models_server() -> Iterator[str]:
    """An OpenAI server's /v1/models as vLLM answers it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            body = json.dumps({"data": [{"id": "m", "max_model_len": 4096}]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
