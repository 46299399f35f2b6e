"""A model server started for one checkpoint, owned by the service that generates with it.

vLLM's OpenAI server serves the one model it was started with, and a trained checkpoint is a new
set of full weights. So a service whose job names another model stops its server and starts one
for that model (``inference.serve_command``, e.g. ``vllm serve {model} --port {port}``): the
old process exits, which frees all of its GPU memory, and the request's ``model`` is always the
checkpoint the job names (a server started for another refuses it).
"""

from __future__ import annotations

import ctypes
import logging
import shlex
import signal
import socket
import subprocess
import sys
import time

import httpx

from shared.core.settings import InferenceConfig

log = logging.getLogger(__name__)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Loaded here, not in the forked child, where loading a library could wait on a lock another
# thread of the service held at the fork.
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """Runs in the server's process before it execs: the kernel sends it SIGTERM when the thread
    that started it ends, a service killed with SIGKILL included, so no model server (and its GPU
    memory) outlives its service. The thread is the consumer's handler thread, which lives as
    long as the consumer."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerFailed(RuntimeError):
    """The model server exited, or did not list its model within the start-up timeout."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ModelServer:
    """``cfg.serve_command`` for ``model`` on a free local port, ready when it lists the model."""

    def __init__(self, model: str, cfg: InferenceConfig) -> None:
        self.model = model
        port = cfg.serve_port or free_port()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        args = [
            a.replace("{model}", model).replace("{port}", str(port))
            for a in shlex.split(cfg.serve_command)
        ]
        log.info("starting a model server for %s: %s", model, shlex.join(args))
        # Its output goes to the service's own: `docker compose logs` shows both.
        self.process = subprocess.Popen(args, preexec_fn=_die_with_parent if LIBC else None)
        try:
            self._wait_ready(cfg.serve_start_timeout_s, cfg.openai_api_key)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout_s: float, api_key: str) -> None:
        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Bearer {api_key}"}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"the model server for {self.model} exited with {self.process.returncode} "
                    "before it was ready (its output is in this service's log)"
                )
            try:
                reply = httpx.get(self.base_url + "/models", headers=headers, timeout=5)
                if reply.is_success and any(
                    m.get("id") == self.model for m in reply.json().get("data", [])
                ):
                    log.info("model server for %s ready at %s", self.model, self.base_url)
                    return
            except (httpx.HTTPError, ValueError):
                pass  # not listening yet
            time.sleep(0.5)
        raise ServerFailed(
            f"the model server for {self.model} did not list it within {timeout_s:.0f} s "
            "(inference.serve_start_timeout_s)"
        )

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 30 s) and wait until it has exited."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
