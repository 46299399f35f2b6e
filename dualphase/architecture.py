"""The layering of the code base, read from the code itself: who imports whom.

``docs/architecture.md`` shows the package graph as a Mermaid diagram generated here
(``python -m dualphase.architecture`` rewrites it), and ``tests/test_architecture.py`` fails when
an import breaks a rule of ``ALLOWED`` or the diagram is stale.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from shared.core.messages import SERVICES

ROOT = Path(__file__).resolve().parents[1]

# Area -> the areas it may import (besides itself). Areas are shared's sub-packages, each
# service, the operator layer (`dualphase`) and the benchmarks. Dependencies point one way:
# services import shared, never the reverse, and no service imports another.
ALLOWED: dict[str, set[str]] = {
    "shared.core": set(),
    "shared.inference": {"shared.core"},
    "shared.datasets": {"shared.core"},
    "shared.method": {"shared.core", "shared.inference", "shared.datasets"},
    **{f"{s}_svc": {"shared"} for s in SERVICES},
    "dualphase": {"shared"},
    "benchmarks": {"shared", "dualphase", *(f"{s}_svc" for s in SERVICES)},
}
PROJECT = ("shared", "dualphase", "benchmarks", *(f"{s}_svc" for s in SERVICES))


def module_name(path: Path) -> str:
    """The import name of a file: ``sampler-svc/rounds.py`` is ``sampler_svc.rounds``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = parts[0].replace("-svc", "_svc")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    folders = ["shared", "dualphase", "benchmarks", *(f"{s}-svc" for s in SERVICES)]
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "versions" not in p.parts)


def imports(path: Path) -> set[str]:
    """Project modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT}
    return found


def area(module: str) -> str:
    """The area of a module: ``shared.<sub-package>``, a service, ``dualphase``, ``benchmarks``."""
    parts = module.split(".")
    if parts[0] == "shared":
        return ".".join(parts[:2]) if len(parts) > 1 else "shared"
    return parts[0]


def allowed(src: str, target: str) -> bool:
    """Whether module ``src`` may import module ``target``."""
    mine, theirs = area(src), area(target)
    return (
        mine == theirs
        or target == "shared"  # the package itself, for `from shared import <sub-package>`
        or any(theirs == a or target == a or target.startswith(a + ".") for a in ALLOWED[mine])
    )


def violations() -> list[str]:
    """Every import that breaks a rule, as ``file: imports module``."""
    out = []
    for path in source_files():
        src = module_name(path)
        for target in sorted(imports(path)):
            if not allowed(src, target):
                out.append(
                    f"{path.relative_to(ROOT)}: imports {target} ({area(src)} may import "
                    f"{', '.join(sorted(ALLOWED[area(src)])) or 'nothing of the project'})"
                )
    return out


def area_graph() -> dict[str, set[str]]:
    """Area -> the areas it imports (what the diagram shows)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in source_files():
        mine = area(module_name(path))
        graph[mine] |= {area(t) for t in imports(path) if area(t) not in (mine, "shared")}
    graph.pop("shared", None)  # shared/__init__.py: a docstring
    return graph


def two_way_pairs() -> list[tuple[str, str]]:
    """Pairs of areas that import each other (the layering allows none)."""
    graph = area_graph()
    return sorted(
        (a, b) for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ())
    )


def mermaid() -> str:
    """The area graph as a Mermaid flowchart (GitHub renders it in Markdown)."""
    node = lambda name: re.sub(r"\W", "_", name)  # noqa: E731 - Mermaid ids are words
    lines = ["flowchart TD"]
    for name in sorted(area_graph()):
        lines.append(f'    {node(name)}["{name}"]')
    for name, targets in sorted(area_graph().items()):
        lines += [f"    {node(name)} --> {node(t)}" for t in sorted(targets)]
    return "\n".join(lines)


DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "```mermaid\n", "```"


def _diagram_span(text: str) -> tuple[int, int]:
    start = text.index(BEGIN) + len(BEGIN)
    return start, text.index(END, start)


def diagram_in_doc() -> str:
    text = DOC.read_text()
    start, end = _diagram_span(text)
    return text[start:end].rstrip("\n")


def write_diagram() -> None:
    """Rewrite the diagram in docs/architecture.md from the code."""
    text = DOC.read_text()
    start, end = _diagram_span(text)
    DOC.write_text(text[:start] + mermaid() + "\n" + text[end:])


if __name__ == "__main__":
    write_diagram()
    print("\n".join(violations()) or f"{DOC}: diagram rewritten; no import breaks a rule")
