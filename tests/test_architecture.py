"""The layering stays: services import shared, never the reverse, and the map is current."""

from __future__ import annotations

from dualphase import architecture
from dualphase.architecture import ALLOWED, allowed


def test_no_import_breaks_a_layering_rule() -> None:
    assert architecture.violations() == []


def test_no_two_areas_import_each_other() -> None:
    assert architecture.two_way_pairs() == []


def test_the_rules_catch_an_upward_or_sideways_import() -> None:
    assert not allowed("shared.core.runs", "sampler_svc.handler")  # the library above a service
    assert not allowed("shared.core.bus", "shared.method.grading")  # core above the method
    assert not allowed("control_svc.reconciler", "sampler_svc.sealing")  # service to service
    assert not allowed("shared.datasets.math", "shared.method.grading")  # no import both ways
    assert not allowed("dualphase.cli", "benchmarks.sampling_simulation")
    assert not allowed("shared.method.evaluation", "dualphase.report")  # library to operator
    assert allowed("sampler_svc.sealing", "shared.core.shards")
    assert allowed("benchmarks.sampling_measured", "verifier_svc.handler")


def test_the_diagram_in_docs_is_generated_from_the_code() -> None:
    assert architecture.diagram_in_doc() == architecture.mermaid(), (
        "docs/architecture.md is stale: run `python -m dualphase.architecture`"
    )


def test_every_area_has_a_row_in_the_docs_table() -> None:
    text = architecture.DOC.read_text()
    for area in ALLOWED:
        assert f"| `{area}`" in text, area
