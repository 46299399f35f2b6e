"""How long the data browser takes to render a big run's problem list (and its other pages).

Builds a SQLite run of ``--problems`` problems with the shape of a real one: 40% in phase 1 with
one three-turn dialogue each, 60% in phase 2 sampled with the schedule [4, 10] (half solved in
round 0 with 4 samples, the rest after 14), a verdict per sample with the verifier's categories
and rule names, the phase-1 and joint shards written and registered by ``shared.core.shards``,
M1 and M2, and 500 gsm8k evaluation problems per model. Each turn is about 1,500 characters (a
long chain of thought is several thousand tokens in the paper; this keeps the file near 140 MB).
Then each page is rendered through the app (FastAPI's TestClient, no network) ``--repeat`` times.

    python -m benchmarks.browse --problems 10000 --repeat 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlalchemy.orm import Session

from dualphase.browse import create_app
from shared.core import migrations, shards
from shared.core.db import (
    AttemptCount,
    CheckpointRow,
    EvalResult,
    EvalSampleRow,
    GenerationRow,
    Problem,
    RuleCount,
    Run,
    VerdictRow,
    make_engine,
    make_sessionmaker,
)
from shared.core.settings import Settings

WORDS = "so we add the numbers and check each step again then the total is right because".split()
RULES = ["not_truncated", "explicit_answer", "boxed_answer", "length", "no_repetition"]
SUBJECTS = ["apples", "marbles", "pencils", "cards", "eggs", "books", "coins", "stamps"]


def _paragraphs(rng: random.Random, n: int = 64, chars: int = 1500) -> list[str]:
    """A few long texts to draw turns from (drawing every word of every turn would take minutes)."""
    out = []
    for _ in range(n):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < chars:
            words.append(rng.choice(WORDS))
        out.append(" ".join(words))
    return out


def _chunks(session: Session, model: type, rows: list[dict[str, Any]], size: int = 2000) -> None:
    for i in range(0, len(rows), size):
        session.execute(insert(model), rows[i : i + size])


def _verdict(rng: random.Random, phase: int, right: bool) -> dict[str, Any]:
    failed = [r for r in RULES if rng.random() < 0.08]
    category = ("R" if rng.random() < 0.6 else "W") if phase == 1 else ""
    return dict(
        category=category + ("R" if right else "W"),
        initial_correct=category == "R" if phase == 1 else None,
        final_correct=right,
        accepted=right and not failed,
        failed_rules=failed,
        extracted=str(rng.randint(1, 200)),
    )


def make_run(url: str, data_dir: Path, problems: int, seed: int = 0) -> str:
    """Write one run of ``problems`` problems into the (migrated) database at ``url``."""
    rng = random.Random(seed)
    texts = _paragraphs(rng)
    run_id = "run-bench"
    n1 = problems * 2 // 5
    probs, gens, verdicts, attempts = [], [], [], []
    for i in range(problems):
        phase, pid = (1, f"p1-{i:05d}") if i < n1 else (2, f"p2-{i:05d}")
        subject = rng.choice(SUBJECTS)
        question = f"Eli has {i % 97 + 3} {subject}. He gets {i % 13 + 2} more. How many now?"
        probs.append(dict(run_id=run_id, problem_id=pid, phase=phase, question=question, gold="7"))
        if phase == 1:
            samples = [(f"{run_id}:{pid}:p1:0", 0, rng.random() < 0.35)]
        else:
            solved_early = rng.random() < 0.5
            samples = [(f"{run_id}:{pid}:r0:{k}", 0, solved_early and k == 3) for k in range(4)]
            if not solved_early:
                samples += [(f"{run_id}:{pid}:r1:{k}", 1, rng.random() < 0.1) for k in range(10)]
            right = sum(ok for *_, ok in samples)
            state = "solved" if right else "exhausted"
            attempts.append(
                dict(run_id=run_id, problem_id=pid, round=samples[-1][1], attempts=len(samples))
                | dict(corrects=right, state=state)
            )
        for sid, round_, ok in samples:
            turns = [rng.choice(texts) for _ in range(3 if phase == 1 else 1)]
            key = dict(run_id=run_id, problem_id=pid, sample_id=sid, phase=phase, round=round_)
            gens.append(
                key
                | dict(job_id=sid.rsplit(":", 1)[0], turns=turns, tokens=[400] * len(turns))
                | dict(finish_reasons=["stop"] * len(turns), model="m", prompt_version="v1")
                | dict(params={}, seed=0)
            )
            verdicts.append(key | _verdict(rng, phase, ok))
    settings = Settings()
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as session:
        session.add(Run(id=run_id, config=settings.model_dump(mode="json"), status="complete"))
        session.flush()
        for model, rows in ((Problem, probs), (GenerationRow, gens), (VerdictRow, verdicts)):
            _chunks(session, model, rows)
        _chunks(session, AttemptCount, attempts)
        _shards_and_counts(session, data_dir, run_id, verdicts, texts)
        _models_and_eval(session, run_id, rng)
    engine.dispose()
    return run_id


def _shards_and_counts(
    session: Session, data_dir: Path, run_id: str, verdicts: list[dict], texts: list[str]
) -> None:
    accepted = [v for v in verdicts if v["accepted"]]
    phase1 = [v for v in accepted if v["phase"] == 1]
    first_right = [v for v in phase1 if v["initial_correct"]]
    first_wrong = [v for v in phase1 if not v["initial_correct"]]
    n = min(len(first_right), len(first_wrong))
    kept1 = first_right[:n] + first_wrong[:n]
    kept2 = [v for v in accepted if v["phase"] == 2]

    def row(v: dict, source: str) -> dict:
        prompt = [{"role": "user", "content": "A question."}]
        text = texts[zlib.crc32(v["sample_id"].encode()) % len(texts)]
        completion = [{"role": "assistant", "content": text}]
        ids = {k: v[k] for k in ("run_id", "problem_id", "sample_id")}
        return dict(prompt=prompt, completion=completion, source=source) | ids

    rows1 = [row(v, "multi-turn") for v in kept1]
    shards.write(session, data_dir, run_id, "phase1", rows1)
    shards.write(session, data_dir, run_id, "joint", rows1 + [row(v, "rejection") for v in kept2])
    kept_ids = {v["sample_id"] for v in kept1}
    counts = Counter()
    for v in verdicts:
        for rule in v["failed_rules"]:
            counts[rule] += 1
        if v["phase"] == 1:
            counts[f"phase1:category:{v['category']}"] += 1
            counts[f"phase1:kept:{v['category']}"] += v["sample_id"] in kept_ids
    rules = [
        dict(run_id=run_id, rule=r, failed=counts[r], passed=len(verdicts) - counts[r])
        for r in RULES
    ]
    for c in ("RR", "RW", "WR", "WW"):
        kept = counts[f"phase1:kept:{c}"]
        rule = f"phase1:category:{c}"
        rules.append(dict(run_id=run_id, rule=rule, failed=counts[rule] - kept, passed=kept))
    _chunks(session, RuleCount, rules)


def _models_and_eval(session: Session, run_id: str, rng: random.Random) -> None:
    for stage in ("M1", "M2"):
        session.add(CheckpointRow(id=f"{run_id}-{stage}", run_id=run_id, stage=stage, path="/m"))
    for checkpoint, p_right in (("base", 0.3), (f"{run_id}-M1", 0.4), (f"{run_id}-M2", 0.5)):
        key = dict(run_id=run_id, checkpoint_id=checkpoint, benchmark="gsm8k", mode="base")
        right = [rng.random() < p_right for _ in range(500)]
        samples = [
            key
            | dict(problem_id=f"gsm8k-{i}", sample=0, turns=["The answer is 7."], tokens=300)
            | dict(extracted="7", correct=ok)
            for i, ok in enumerate(right)
        ]
        _chunks(session, EvalSampleRow, samples)
        accuracy = sum(right) / len(right)
        session.add(EvalResult(**key, problems=500, samples=1, accuracy=accuracy, mean_tokens=300))


def pages(run_id: str, problems: int) -> dict[str, str]:
    last = -(-problems // 50)
    base = f"/runs/{run_id}/problems"
    return {
        "problem list, first page": base,
        f"problem list, deep page ({last})": f"{base}?page={last}",
        "filtered: WR, accepted, kept": f"{base}?category=WR&verdict=accepted&kept=yes",
        "filtered: rule + question text": f"{base}?rule=explicit_answer&q=marbles",
        "filtered: phase 2 rejected, page 20": f"{base}?phase=2&verdict=rejected&page=20",
        "one phase-2 problem": f"{base}/p2-{problems - 1:05d}",
        "run page (stages, report sections)": f"/runs/{run_id}",
        "evaluation (500 problems)": f"/runs/{run_id}/eval",
    }


def measure(folder: Path, problems: int, repeat: int) -> None:
    url = f"sqlite:///{folder / 'bench.db'}"
    migrations.upgrade(url)
    start = time.perf_counter()
    run_id = make_run(url, folder, problems)
    size = (folder / "bench.db").stat().st_size / 2**20
    print(f"built {problems} problems in {time.perf_counter() - start:.1f} s ({size:.0f} MB)")
    client = TestClient(create_app(make_sessionmaker(make_engine(url))))
    start = time.perf_counter()
    assert client.get(f"/runs/{run_id}/problems").status_code == 200
    print(f"first request, shard files read: {1000 * (time.perf_counter() - start):.0f} ms")
    print(f"| page | median ms | min ms | max ms | table rows |  ({repeat} repetitions)")
    print("|---|---|---|---|---|")
    for name, path in pages(run_id, problems).items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            response = client.get(path)
            times.append(1000 * (time.perf_counter() - start))
            assert response.status_code == 200, (path, response.status_code)
        rows = response.text.count("<tr>") - 1
        print(
            f"| {name} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} "
            f"| {rows} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="Build the run in this folder and keep it.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="browse-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        measure(folder, args.problems, args.repeat)


if __name__ == "__main__":
    main()
