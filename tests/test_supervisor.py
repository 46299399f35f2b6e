"""The embedded stack's supervisor on real service processes: a service that keeps dying is
restarted with a back-off, then given up on with one line that names it and its log. (That a
killed service is restarted and the run completes is in tests/test_faults.py.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dualphase.embedded import ServiceDied, Supervisor, start_service


def test_a_service_that_keeps_dying_is_restarted_then_named_with_its_log(tmp_path: Path) -> None:
    # An invalid setting: verifier-svc exits at start-up every time it is started.
    env = {**os.environ, "DUALPHASE_COMMON__PARTITIONS": "many"}
    log_dir = tmp_path / "logs"
    supervisor = Supervisor(env, log_dir, {}, max_restarts=2, backoff_s=0.1)
    supervisor.procs["verifier"] = start_service("verifier", env, log_dir)
    notices: list[str] = []
    deadline = time.monotonic() + 120
    with pytest.raises(ServiceDied) as died:
        while time.monotonic() < deadline:
            notices += supervisor.check()
            time.sleep(0.05)
    assert str(died.value).startswith("verifier-svc exited with 1 after 2 restarts in 10 min")
    assert str(log_dir / "verifier.log") in str(died.value)
    assert len(supervisor.restarts["verifier"]) == 2
    # Each death is announced once with its back-off (doubling), then its restart; the third
    # death gives up.
    assert [n.split(" ")[1] for n in notices] == ["exited", "restarted"] * 2
    assert [n.split("; ")[1] for n in notices[::2]] == ["restart in 0.1 s", "restart in 0.2 s"]
    assert "partitions" in (log_dir / "verifier.log").read_text()
