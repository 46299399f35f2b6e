"""The trainer reads its shard with HF_HOME on a volume it cannot write.

compose mounts the `models` volume read-only (`models:/models:ro`) and sets HF_HOME=/models/hf
for every service, so the base model is read offline from one place. `datasets.load_dataset`
writes its cache under HF_HOME/datasets: in the containers every training job failed with
"OSError: [Errno 30] Read-only file system: '/models/hf/datasets'" (deploy/rehearse.sh found it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_load_shard_writes_nothing_under_hf_home(tmp_path: Path) -> None:
    shard = tmp_path / "shard.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "completion": [{"role": "assistant", "content": f"\\boxed{{{i + 1}}}"}],
            "problem_id": f"p{i}",
        }
        for i in range(3)
    ]
    shard.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # A folder nobody can create, not even root (the tests run as root, so permissions would not
    # stop a write): HF_HOME below a plain file. A fresh interpreter, since `datasets` reads
    # HF_HOME when it is imported.
    blocker = tmp_path / "read-only"
    blocker.write_text("")
    script = (
        "import json, sys\n"
        "from trainer_svc.train import load_shard\n"
        "print(json.dumps(load_shard(sys.argv[1:]).to_list()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(shard)],
        cwd=ROOT,
        env={**os.environ, "HF_HOME": str(blocker / "hf"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded == [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
