"""Inference backends generating real text with the embedded SmolLM2-135M-Instruct model.

transformers runs in-process; openai runs against a real `transformers serve` process serving the
prepared embedded folder; vLLM runs only where it is importable with a GPU. The retry and error
paths of the openai backend are driven by a scripted local HTTP server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a hub in tests

import httpx
import pytest

from shared.core.bus import Publisher, ensure_topics
from shared.core.consumer import Consumer
from shared.core.messages import PROBLEMS, Message, ProblemJob, SamplingParams
from shared.core.settings import CommonSettings, InferenceConfig
from shared.inference import Backend, ChatResult, OneModel, decode, load_backend
from shared.inference.model import EMBEDDED_NAME, prepare_embedded_model, resolve_model
from shared.inference.openai import BackendUnavailable, OpenAIError
from shared.inference.server import ServerFailed
from shared.inference.stops import cut_after_answer

ADD = [{"role": "user", "content": "What is 2+3?"}]
HI = [{"role": "user", "content": "Hi"}]
STORY = [{"role": "user", "content": "Write a short story about a cat on a boat."}]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def cfg() -> InferenceConfig:
    # 2 rows per generate call: several batches per chat. One thread: the test machine is shared,
    # and torch threads competing with other processes for the cores run several times slower.
    # float32 on every CPU: `auto` picks bfloat16 where it is native, and bfloat16 rounding
    # changes with the padding of a batch, so greedy text would differ between batch shapes
    # (and from the float32 weights `transformers serve` loads).
    return InferenceConfig(batch_size=2, threads=1, dtype="float32")


@pytest.fixture(scope="module")
def embedded(cfg: InferenceConfig) -> Path:
    return prepare_embedded_model(cfg.model_cache_dir)


@pytest.fixture(scope="module")
def local(cfg: InferenceConfig, embedded: Path) -> Backend:
    return load_backend(cfg)


def texts(results: list[ChatResult]) -> list[list[str]]:
    return [[c.text for c in r.completions] for r in results]


def test_embedded_model_is_prepared_once_and_reused(cfg: InferenceConfig, embedded: Path) -> None:
    weights = embedded / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare_embedded_model(cfg.model_cache_dir) == embedded
    assert weights.stat().st_mtime_ns == before  # not converted again
    assert {"config.json", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in embedded.iterdir()
    }
    assert resolve_model("embedded", cfg) == str(embedded)
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct", cfg) == "Qwen/Qwen2.5-7B-Instruct"


@pytest.mark.slow
def test_concurrent_preparations_leave_one_complete_folder(tmp_path: Path) -> None:
    # Two processes, as two services starting at once would be.
    code = "import sys; from pathlib import Path; "
    code += "from shared.inference.model import prepare_embedded_model; "
    code += "print(prepare_embedded_model(Path(sys.argv[1])))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [str(tmp_path / EMBEDDED_NAME)] * 2
    assert [p.name for p in tmp_path.iterdir()] == [EMBEDDED_NAME]  # no temporary folder left
    assert (tmp_path / EMBEDDED_NAME / "model.safetensors").is_file()


def test_transformers_backend_answers_every_conversation_and_sample(local: Backend) -> None:
    results = local.chat([ADD, HI, STORY], GREEDY.model_copy(update={"n": 2}))
    assert len(results) == 3 and all(len(r.completions) == 2 for r in results)
    assert "5" in results[0].completions[0].text
    for result in results:
        assert result.model_id.startswith(f"{EMBEDDED_NAME}@sha256:")
        for completion in result.completions:
            assert completion.text.strip()
            assert 1 <= completion.tokens <= 16
    assert results[2].completions[0].finish_reason == "length"  # a story needs more than 16
    assert results[1].completions[0].finish_reason == "stop"  # a greeting ends by itself


def test_batched_greedy_equals_one_conversation_at_a_time(local: Backend) -> None:
    # Left padding and the attention mask must make batching invisible in the output.
    batched = texts(local.chat([ADD, HI, STORY], GREEDY))
    alone = [texts(local.chat([conv], GREEDY))[0] for conv in (ADD, HI, STORY)]
    assert batched == alone


def test_seeded_samples_are_reproducible_and_do_not_depend_on_batch(local: Backend) -> None:
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=7)
    first = texts(local.chat([STORY, ADD], params))
    assert texts(local.chat([STORY, ADD], params)) == first
    assert texts(local.chat([STORY], params))[0] == first[0]  # other rows in the batch don't matter
    assert len(set(first[0])) > 1  # seeds 7, 8, 9 give different stories
    other_seed = texts(local.chat([STORY], params.model_copy(update={"seed": 100})))[0]
    assert other_seed != first[0]


def test_stop_string_cuts_text_and_finishes_with_stop(local: Backend) -> None:
    [result] = local.chat([ADD], GREEDY.model_copy(update={"stop": ["="]}))
    [completion] = result.completions
    assert "=" not in completion.text and completion.text.strip()
    assert completion.finish_reason == "stop"
    assert completion.tokens < 16


def test_token_budget_gives_exact_count_and_length_finish(local: Backend) -> None:
    [result] = local.chat([STORY], GREEDY.model_copy(update={"max_new_tokens": 5}))
    assert result.completions[0].tokens == 5
    assert result.completions[0].finish_reason == "length"
    assert local.count_tokens("Hello world") == 2


def test_cut_after_answer_ends_at_the_first_complete_answer_line() -> None:
    text = "3 + 5 = 8.\nThe answer is \\boxed{8}.\n\nThe answer is 9."
    assert cut_after_answer(text) == ("3 + 5 = 8.\nThe answer is \\boxed{8}.", True)
    assert cut_after_answer("So the Answer is 7\nmore") == ("So the Answer is 7", True)
    assert cut_after_answer("\\boxed{4} since 2+2\nok") == ("\\boxed{4} since 2+2", True)
    unfinished = "The answer is 8"  # the line has not ended: the model may still write more
    assert cut_after_answer(unfinished) == (unfinished, False)
    assert cut_after_answer("no answer\nhere\n") == ("no answer\nhere\n", False)


# Greedy, this model states an answer and then writes on to its token limit.
CARDS = [
    {
        "role": "user",
        "content": "Example: Sam has 5 pens. Then Sam gets 3 more pens. How many pens does Sam "
        "have now?\nSam starts with 5.\n5 + 3 = 8.\nThe answer is \\boxed{8}.\n\nSolve the "
        'next problem the same way, one line per step, and end with "The answer is".\n\nAna has '
        "9 cards. Then Ana gives away 3 cards. How many cards does Ana have now?",
    }
]


def test_stop_after_answer_ends_the_row_where_its_answer_line_ends(local: Backend) -> None:
    greedy = GREEDY.model_copy(update={"max_new_tokens": 64})
    [[full]] = [r.completions for r in local.chat([CARDS], greedy)]
    cut, answered = cut_after_answer(full.text)
    assert answered and full.finish_reason == "length", "the premise: it runs on past its answer"
    [[stopped]] = [
        r.completions
        for r in local.chat([CARDS], greedy.model_copy(update={"stop_after_answer": True}))
    ]
    assert stopped.text == cut, "the same tokens up to the answer line"
    assert stopped.finish_reason == "stop"
    assert stopped.tokens < full.tokens, "generation stopped there, not only the text"


def test_continuous_and_padded_batching_give_the_same_tokens(
    cfg: InferenceConfig, local: Backend
) -> None:
    # Two rows at a time, four conversations ending at different steps: rows leave the batch
    # and waiting ones are prefilled and merged in (their caches left-padded) while others run.
    padded = load_backend(cfg.model_copy(update={"batching": "padded"}))
    convs = [HI, ADD, STORY, CARDS]
    for params in (
        GREEDY.model_copy(update={"max_new_tokens": 24}),
        SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=16, seed=5),
    ):
        got = [
            [(c.text, c.tokens, c.finish_reason) for c in r.completions]
            for results in (local.chat(convs, params), padded.chat(convs, params))
            for r in results
        ]
        assert got[:4] == got[4:], params
    padded.close()


def test_samples_of_one_prompt_share_one_prefill_and_draw_as_if_alone(
    cfg: InferenceConfig, embedded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    four = load_backend(cfg.model_copy(update={"batch_size": 4}))
    prefill_rows: list[int] = []
    forward = decode._forward

    def counting(model, ids, mask, cache, positions):  # type: ignore[no-untyped-def]
        if ids.shape[1] > 1:  # a prefill, not a one-token decoding step
            prefill_rows.append(ids.shape[0])
        return forward(model, ids, mask, cache, positions)

    monkeypatch.setattr(decode, "_forward", counting)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=3)
    shared = texts(four.chat([STORY], params))[0]
    assert prefill_rows == [1]  # four samples, one prompt in the prefill
    alone = [
        texts(four.chat([STORY], params.model_copy(update={"n": 1, "seed": 3 + i})))[0][0]
        for i in range(4)
    ]
    assert shared == alone and len(set(shared)) > 1
    four.close()


# --- openai backend against a real `transformers serve` ----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(cfg: InferenceConfig, embedded: Path) -> Iterator[InferenceConfig]:
    port = free_port()
    cli = Path(sys.executable).parent / "transformers"
    cmd = [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as in `cfg`
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            pytest.fail(f"`{' '.join(cmd)}` exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"`{' '.join(cmd)}` not healthy after 180 s")
        time.sleep(0.5)
    yield cfg.model_copy(
        update={"backend": "openai", "openai_base_url": f"http://127.0.0.1:{port}/v1"}
    )
    server.terminate()
    server.wait(timeout=30)


def test_openai_backend_matches_in_process_greedy_text(served: InferenceConfig, local: Backend):
    remote = load_backend(served)
    results = remote.chat([ADD, HI], GREEDY)
    assert texts(results) == [texts(local.chat([conv], GREEDY))[0] for conv in (ADD, HI)]
    assert results[0].model_id == local.model_id  # same weights, same identity
    assert all(r.completions[0].tokens >= 1 for r in results)
    [stopped] = remote.chat([ADD], GREEDY.model_copy(update={"stop": ["="]}))
    assert "=" not in stopped.completions[0].text
    assert stopped.completions[0].finish_reason == "stop"


def test_openai_backend_seeded_samples_are_reproducible(served: InferenceConfig) -> None:
    # The server seeds torch globally per request, so only one request at a time is reproducible.
    remote = load_backend(served.model_copy(update={"max_concurrency": 1}))
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=3)
    first = texts(remote.chat([STORY], params))
    assert texts(remote.chat([STORY], params)) == first
    assert first[0][0] != first[0][1]  # seeds 3 and 4 differ


# --- a server started per model (inference.serve_command), as compose runs it ----------------


def test_serve_command_serves_the_model_each_job_names_one_at_a_time(
    cfg: InferenceConfig, embedded: Path, tmp_path: Path
) -> None:
    other = tmp_path / "checkpoint"  # a second model folder: the same weights under another path
    other.mkdir()
    for file in embedded.iterdir():
        (other / file.name).symlink_to(file)
    cli = Path(sys.executable).parent / "transformers"
    models = OneModel(
        cfg.model_copy(
            update={
                "backend": "openai",
                "max_concurrency": 1,
                "serve_command": f"{cli} serve --host 127.0.0.1 --port {{port}} {{model}}",
            }
        )
    )
    first = models(str(embedded))
    assert models(str(embedded)) is first  # the same model: the same server
    [answer] = first.chat([ADD], GREEDY)
    assert answer.completions[0].tokens >= 1
    # The server started for one model refuses another name: a request always names the model
    # that was started for it.
    with pytest.raises(OpenAIError, match="pinned"):
        first._post({"model": str(other), "messages": ADD, "max_tokens": 2})

    second = models(str(other))
    assert first.server.process.poll() is not None, "the first server was not stopped"
    assert second.chat([ADD], GREEDY)[0].completions[0].text == answer.completions[0].text
    models.close()
    assert second.server.process.poll() is not None


HOLD_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_model_swap_waits_for_the_cotenant_holding_the_start_lock(
    cfg: InferenceConfig, embedded: Path, tmp_path: Path
) -> None:
    # The other service of the same GPU is starting its server: this one must not start its own
    # (nor free its old one) until that start is over.
    lock = tmp_path / "locks" / "gpu-0"
    lock.parent.mkdir()
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock), "3"], stdout=subprocess.PIPE, text=True
    )
    assert other.stdout is not None and other.stdout.readline().strip() == "locked"
    began = time.monotonic()
    models = OneModel(cfg.model_copy(update={"start_lock": lock}))
    models(str(embedded))
    waited = time.monotonic() - began
    other.wait()
    models.close()
    assert waited >= 2.0, f"started after {waited:.1f} s, while the co-tenant held the lock"


def test_serve_command_that_exits_names_the_model(cfg: InferenceConfig, embedded: Path) -> None:
    with pytest.raises(ServerFailed, match=f"server for {embedded} exited with 3"):
        OneModel(cfg.model_copy(update={"backend": "openai", "serve_command": "sh -c 'exit 3'"}))(
            str(embedded)
        )


ROOT = Path(__file__).resolve().parents[1]
# A stand-in model server: lists the one model it was started for, as the real ones do.
FAKE_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, model = int(sys.argv[1]), sys.argv[2]
class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": model}]}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
HTTPServer(("127.0.0.1", port), Models).serve_forever()
"""

# A service that starts a model server, prints its pid, then waits to be killed.
SERVICE = """
import sys, time
from shared.core.settings import InferenceConfig
from shared.inference.server import ModelServer
cfg = InferenceConfig(serve_command=sys.argv[1])
print(ModelServer("m", cfg).process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_model_server_does_not_outlive_a_service_killed_with_sigkill(tmp_path: Path) -> None:
    (tmp_path / "fake_server.py").write_text(FAKE_SERVER)
    command = f"{sys.executable} {tmp_path / 'fake_server.py'} {{port}} {{model}}"
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE, command], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    server_pid = int(service.stdout.readline())
    assert running(server_pid)
    service.kill()
    service.wait()
    deadline = time.monotonic() + 10
    while running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running(server_pid):
        os.kill(server_pid, 9)
        pytest.fail("the model server outlived its service")


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process its new parent has not reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- openai backend retry and error paths, against a scripted local server -------------------


def scripted_server(statuses: list[int]) -> tuple[ThreadingHTTPServer, list[int]]:
    """A server answering each POST with the next status (the last one repeats)."""
    seen: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers["Content-Length"]))
            status = statuses[min(len(seen), len(statuses) - 1)]
            seen.append(status)
            body = {"error": {"message": "model 'nope' does not exist"}}
            if status == 200:
                body = {
                    "choices": [{"message": {"content": "42"}, "finish_reason": "stop"}],
                    "usage": {"completion_tokens": 2},
                }
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def scripted_backend(server: ThreadingHTTPServer, max_retries: int = 3) -> Backend:
    cfg = InferenceConfig(
        backend="openai",
        model="nope",
        openai_base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
        max_retries=max_retries,
        retry_backoff_s=0.01,
    )
    return load_backend(cfg)


def test_openai_backend_retries_429_and_5xx_then_succeeds() -> None:
    server, seen = scripted_server([503, 429, 200])
    [result] = scripted_backend(server).chat([ADD], GREEDY)
    server.shutdown()
    assert seen == [503, 429, 200]
    assert result.completions[0].text == "42" and result.completions[0].tokens == 2


def test_openai_backend_raises_clear_error_on_4xx_without_retrying() -> None:
    server, seen = scripted_server([404])
    with pytest.raises(OpenAIError, match=r"HTTP 404: .*model 'nope' does not exist"):
        scripted_backend(server).chat([ADD], GREEDY)
    server.shutdown()
    assert seen == [404]


def test_openai_backend_gives_up_after_max_retries() -> None:
    server, seen = scripted_server([500])
    with pytest.raises(BackendUnavailable, match=r"after 3 attempts; last error: HTTP 500"):
        scripted_backend(server, max_retries=2).chat([ADD], GREEDY)
    server.shutdown()
    assert seen == [500, 500, 500]


def test_a_server_away_longer_than_the_retries_keeps_the_job_instead_of_dead_lettering(
    common: CommonSettings,
) -> None:
    # Six 503s against two attempts per call: the backend gives up twice, and the consumer
    # retries the job until the server answers (it used to go to the dead-letter topic).
    server, seen = scripted_server([503] * 5 + [200])
    backend = scripted_backend(server, max_retries=1)
    ensure_topics(common, [PROBLEMS])
    publisher = Publisher(common)
    publisher.publish(
        PROBLEMS,
        ProblemJob(
            run_id="r",
            kind="sample",
            problem_id="p",
            job_id="r:p:r0",
            phase=2,
            question="",
            gold="",
        ),
    )
    answers: list[str] = []

    def generate(job: Message) -> None:
        answers.append(backend.chat([ADD], GREEDY)[0].completions[0].text)

    consumer = Consumer(common, PROBLEMS, "generator", ProblemJob, generate, publisher)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not answers and time.monotonic() < deadline:
        time.sleep(0.2)
    consumer.stop()
    thread.join(30)
    publisher.close()
    server.shutdown()
    assert answers == ["42"] and seen == [503] * 5 + [200]
    assert (consumer.status()["retries"], consumer.status()["dlq"]) == (2, 0)


# --- vLLM ----------------------------------------------------------------------------------------


def test_vllm_backend_generates_text(cfg: InferenceConfig, embedded: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (the `gpu` extra; needs CUDA)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM is installed but no CUDA GPU is visible")
    backend = load_backend(cfg.model_copy(update={"backend": "vllm"}))
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=1)
    results = backend.chat([ADD, STORY], params)
    assert [len(r.completions) for r in results] == [2, 2]
    assert all(c.text.strip() and 1 <= c.tokens <= 16 for r in results for c in r.completions)
    assert texts(backend.chat([ADD, STORY], params)) == texts(results)
    assert "5" in backend.chat([ADD], GREEDY)[0].completions[0].text
