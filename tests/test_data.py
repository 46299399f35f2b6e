"""Datasets by public id and pinned revision (shared/datasets/sources.py), read with
load_dataset: from local copies laid out as the hub lays them out (`hub_copy`, built from the
harness files beside the repository), from the cache, and the errors when neither has one.
`dualphase data prepare`, the paper's pool drawn with the run seed, and no path out of the
repository in what ships."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATASETS
from typer.testing import CliRunner

import shared.datasets
from dualphase.cli import app
from shared.core.settings import (
    CONFIG_ENV,
    DataSettings,
    EvalSettings,
    SettingsError,
    load_settings,
)
from shared.datasets import (
    BENCHMARKS,
    POOLS,
    DatasetFormatError,
    DatasetUnavailable,
    load_benchmark,
    load_benchmarks,
    load_pool,
    read_benchmark_file,
)
from shared.datasets.problems import draw_problems, parse_problems, pool_draw

ROOT = Path(__file__).resolve().parents[1]
HARNESS = SHARED_DATASETS / "benchmarks"
MATH_TEST = SHARED_DATASETS / "train" / "math_test_full.jsonl"
SETTING = "data.local_dir"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def spy_load_dataset(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders load_dataset reads, with nothing parsed before (the in-process memo empty)."""
    import datasets

    calls: list[str] = []
    real = datasets.load_dataset

    def spy(path: str, *args: object, **kwargs: object) -> object:
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    monkeypatch.setattr(shared.datasets, "_PARSED", {})
    return calls


def triples(problems: list) -> list[tuple[str, str, str]]:
    return [(p.id, p.question, p.gold) for p in problems]


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_the_override_loads_each_benchmark_through_load_dataset_as_the_harness_file_gives_it(
    name: str, data_settings: DataSettings, spy_load_dataset: list[str]
) -> None:
    problems = load_benchmark(name, data_settings)
    harness = read_benchmark_file(name, HARNESS / name / "test.jsonl")
    assert triples(problems) == triples(harness)
    assert all(p.dataset == name for p in problems)
    source = BENCHMARKS[name]
    (folder,) = spy_load_dataset
    if source.keyed:  # written as JSON Lines into the cache first
        assert folder.startswith(str(data_settings.cache_dir / "unfolded" / source.hub_id))
    else:
        assert folder == str(data_settings.local_dir / source.hub_id)


def test_the_math_pool_is_the_math_test_set_without_math500(
    data_settings: DataSettings, spy_load_dataset: list[str]
) -> None:
    pool = load_pool("math", data_settings)
    math500 = {" ".join(p.question.split()) for p in load_benchmark("math500", data_settings)}
    harness = [
        p
        for p in read_benchmark_file("math", MATH_TEST)
        if " ".join(p.question.split()) not in math500
    ]
    assert len(pool) == 4500
    assert triples(pool) == triples(harness)
    assert all(p.solution and p.dataset == "math" for p in pool)
    assert str(data_settings.local_dir / POOLS["math"].hub_id) in spy_load_dataset


def test_the_deepscaler_pool_reads_problem_answer_and_solution(
    data_settings: DataSettings, spy_load_dataset: list[str]
) -> None:
    # The stand-in holds the MATH test problems in DeepScaleR's layout (a JSON array).
    pool = load_pool("deepscaler", data_settings)
    rows = [json.loads(line) for line in MATH_TEST.open()]
    assert [(p.question, p.solution) for p in pool] == [(r["problem"], r["solution"]) for r in rows]
    math_gold = [p.gold.strip() for p in read_benchmark_file("math", MATH_TEST)]
    assert [p.gold for p in pool] == math_gold  # an answer field, stripped
    assert pool[0].id == "deepscaler-0"
    assert spy_load_dataset == [str(data_settings.local_dir / POOLS["deepscaler"].hub_id)]


def test_a_missing_copy_without_a_hub_names_the_dataset_id_and_the_setting(
    tmp_path: Path, offline: None
) -> None:
    data = DataSettings(local_dir=tmp_path / "copies", cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetUnavailable, match=r"HuggingFaceH4/aime_2024.*data\.local_dir"):
        load_benchmark("aime24", data)
    unset = DataSettings(cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetUnavailable, match=r"agentica-org/DeepScaleR-Preview-Dataset.*"):
        load_pool("deepscaler", unset)
    with pytest.raises(DatasetUnavailable, match=r"data\.local_dir \(DUALPHASE_DATA__LOCAL_DIR\)"):
        load_pool("deepscaler", unset)


def test_a_wrong_local_copy_names_the_dataset_id_and_the_setting(
    tmp_path: Path, offline: None
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = DataSettings(local_dir=tmp_path / "copies", cache_dir=tmp_path / "cache")
    (tmp_path / "copies" / "openai" / "gsm8k").mkdir(parents=True)  # the folder, not the file
    with pytest.raises(
        DatasetUnavailable, match=r"openai/gsm8k .*has no main/test-00000-of-00001.parquet.*"
    ) as caught:
        load_benchmark("gsm8k", data)
    assert SETTING in str(caught.value)
    # Rows without the field the format reads: the row, the field, the id, the setting.
    amc = tmp_path / "copies" / "math-ai" / "amc23" / "test-00000-of-00001.parquet"
    amc.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"id": 0, "question": "q", "url": "u"}]), amc)
    with pytest.raises(DatasetFormatError, match=r"math-ai/amc23.*row 1: field 'answer'") as bad:
        load_benchmark("amc23", data)
    assert SETTING in str(bad.value)
    # A file load_dataset cannot read at all.
    svamp = tmp_path / "copies" / "tongyx361" / "svamp" / "data" / "test-00000-of-00001.parquet"
    svamp.parent.mkdir(parents=True)
    svamp.write_text("not parquet")
    with pytest.raises(DatasetUnavailable, match=r"tongyx361/svamp.*load_dataset cannot read"):
        load_benchmark("svamp", data)
    # TabMWP's file must be one object of rows keyed by problem id.
    tabmwp = tmp_path / "copies" / "Arietem" / "tabmwp" / "problems_test1k.json"
    tabmwp.parent.mkdir(parents=True)
    tabmwp.write_text('[{"question": "q"}]')
    with pytest.raises(DatasetUnavailable, match=r"Arietem/tabmwp.*keyed by problem id"):
        load_benchmark("tabmwp", data)


def test_an_unknown_name_names_the_setting_and_the_dataset_ids() -> None:
    with pytest.raises(ValueError, match=r"unknown benchmark 'mmlu' \(eval\.benchmarks\)") as b:
        load_benchmark("mmlu")
    assert "gsm8k (openai/gsm8k)" in str(b.value)
    with pytest.raises(ValueError, match=r"unknown pool 'gsm8k' \(run\.pool\)") as p:
        load_pool("gsm8k")
    assert "deepscaler (agentica-org/DeepScaleR-Preview-Dataset)" in str(p.value)


def test_an_unknown_pool_in_the_settings_is_named_with_its_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DUALPHASE_RUN__POOL", "gsm8k")
    with pytest.raises(SettingsError, match=r"field 'run.pool'.*'deepscaler'.*got 'gsm8k'"):
        load_settings()


def test_data_prepare_with_the_override_prints_each_datasets_rows_and_writes_the_cache(
    hub_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    config = tmp_path / "prepare.yaml"
    config.write_text("eval: {benchmarks: [synthetic, gsm8k, aime24, tabmwp]}\nrun: {pool: math}\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv(CONFIG_ENV, str(config))  # restored afterwards: --config exports it
    monkeypatch.setenv("DUALPHASE_DATA__LOCAL_DIR", str(hub_copy))
    monkeypatch.setenv("DUALPHASE_DATA__CACHE_DIR", str(cache))
    result = CliRunner().invoke(app, ["data", "prepare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # The rows of each dataset (the MATH pool leaves MATH500's 500 of its 5000 out when drawn).
    expected = {"gsm8k": 1319, "aime24": 30, "tabmwp": 1000, "math500": 500, "math": 5000}
    for name, rows in expected.items():
        source = BENCHMARKS.get(name) or POOLS[name]
        (line,) = [line for line in lines if line.startswith(f"{name}: ")]
        assert f"{rows} rows of {source.hub_id}" in line
        assert f"revision {source.revision}" in line and "local copy" in line
        assert (cache / "hub" / source.hub_id / source.revision / source.data_file).is_file()
    assert "synthetic: made here, nothing to fetch" in lines
    assert any((cache / "arrow").iterdir())  # load_dataset's own cache
    # A service without the local copies reads the cache, offline.
    cached = DataSettings(cache_dir=cache)
    assert len(load_benchmark("tabmwp", cached)) == 1000
    assert len(load_pool("math", cached)) == 4500


def test_data_prepare_fails_naming_what_it_could_not_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    config = tmp_path / "prepare.yaml"
    config.write_text("eval: {benchmarks: [gsm8k]}\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("DUALPHASE_DATA__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DUALPHASE_DATA__LOCAL_DIR", raising=False)
    result = CliRunner().invoke(app, ["data", "prepare", "--config", str(config)])
    assert result.exit_code == 1
    assert "openai/gsm8k" in result.output and "data.local_dir" in result.output


def test_the_paper_config_draws_the_paper_pool_with_the_run_seed(
    data_settings: DataSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(ROOT / "configs" / "paper.yaml"))
    settings = load_settings(ROOT / "configs" / "paper.yaml")
    draw = pool_draw(settings)
    source = POOLS["deepscaler"]
    assert (draw.pool, draw.hub_id, draw.revision) == ("deepscaler", source.hub_id, source.revision)
    assert (draw.phase1, draw.phase2, draw.seed) == (10000, 5000, 0)
    settings = settings.model_copy(update={"data": data_settings})
    # The stand-in pool holds 5000 problems: the paper's 15000 is refused, naming the pool.
    with pytest.raises(ValueError, match=r"run.pool deepscaler .* has 5000 .* 10000 \+ 5000"):
        draw_problems(settings)
    first = draw_problems(settings, 30, 20)
    assert len(first) == 50 and len({s.id for s in first}) == 50
    assert first == draw_problems(settings, 30, 20)  # the seed's draw
    assert first != draw_problems(settings, 30, 20, seed=1)
    assert all(s.dataset == "deepscaler" and s.solution for s in first)
    assert all(s.source == f"{source.hub_id}@{source.revision[:7]}" for s in first)


def test_the_demo_needs_no_hub_and_no_local_copy(
    tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(ROOT / "configs" / "demo.yaml"))  # restored afterwards
    monkeypatch.delenv("DUALPHASE_DATA__LOCAL_DIR", raising=False)
    settings = load_settings(ROOT / "configs" / "demo.yaml")
    data = DataSettings(cache_dir=tmp_path / "cache")
    assert settings.run.pool == "synthetic"
    assert settings.eval.benchmarks == ["synthetic", "synthetic-2"]  # both made here
    settings = settings.model_copy(update={"data": data})
    assert len(draw_problems(settings)) == 8 + 120
    benchmarks = load_benchmarks(settings.eval, data, whole=True)
    assert {name: len(problems) for name, problems in benchmarks.items()} == {
        "synthetic": 200,
        "synthetic-2": 200,  # decontamination checks at least the held-out set's default size
    }


def test_submit_without_a_problem_file_sends_the_pools_draw(
    data_settings: DataSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    config = tmp_path / "run.yaml"
    config.write_text("run: {pool: math, phase1_problems: 3, phase2_problems: 2, seed: 5}\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("DUALPHASE_DATA__LOCAL_DIR", str(data_settings.local_dir))
    monkeypatch.setenv("DUALPHASE_DATA__CACHE_DIR", str(data_settings.cache_dir))
    monkeypatch.setenv("DUALPHASE_CONTROL__ADMIN_TOKEN", "t")
    sent: list[dict] = []

    def post(url: str, json: dict, **kwargs: object) -> httpx.Response:
        sent.append(json)
        return httpx.Response(201, json={"run_id": "run-x"}, request=httpx.Request("POST", url))

    monkeypatch.setattr(httpx, "post", post)
    result = CliRunner().invoke(app, ["submit", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "run-x"
    (body,) = sent
    assert (body["phase1"], body["seed"]) == (3, 5)
    specs = parse_problems(body["problems"].encode(), "body")  # as control-svc reads it
    drawn = draw_problems(load_settings(config).model_copy(update={"data": data_settings}))
    assert [(s.id, s.question, s.gold, s.solution) for s in specs] == [
        (s.id, s.question, s.gold, s.solution) for s in drawn
    ]
    assert {s.dataset for s in specs} == {"math"}


def test_decontamination_checks_every_problem_of_each_evaluated_benchmark(
    data_settings: DataSettings,
) -> None:
    config = EvalSettings(benchmarks=["synthetic", "gsm8k"], limit=3, limits={"synthetic": 7})
    evaluated = load_benchmarks(config, data_settings)
    whole = load_benchmarks(config, data_settings, whole=True)
    assert [len(evaluated["synthetic"]), len(evaluated["gsm8k"])] == [7, 3]
    assert [len(whole["synthetic"]), len(whole["gsm8k"])] == [200, 1319]


def test_nothing_that_ships_points_to_the_shared_folder_outside_the_repository() -> None:
    places = [
        ROOT / "README.md",
        ROOT / "compose.yaml",
        ROOT / ".env.example",
        *[ROOT / d for d in ("docs", "configs", "shared", "dualphase", "benchmarks")],
        *sorted(ROOT.glob("*-svc")),
    ]
    found = []
    for place in places:
        files = [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix in {".png", ".pyc"}:
                continue
            text = path.read_text(errors="replace")
            found += [
                f"{path.relative_to(ROOT)}:{n}"
                for n, line in enumerate(text.splitlines(), 1)
                # the folder itself, or a path into its layout (which the repository lacks)
                if "../shared" in line or "shared/datasets/benchmarks" in line
            ]
    assert found == [], "points outside the repository"
