"""The import-job code's layers: bytes-to-stored-image (catalog.ingest) never imports the durable
jobs (catalog.jobs); inside catalog.jobs each module imports only the layers below it, at the top
of the module (no import hidden in a function to break a cycle); and nothing imports in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

CATALOG = Path(__file__).resolve().parent.parent / "catalog"
# Bottom to top, as catalog/jobs/__init__.py describes them.
JOB_LAYERS = ["payloads", "claims", "builds", "worker", "tasks", "requests"]


def module_name(path: Path) -> str:
    parts = path.relative_to(CATALOG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((CATALOG / package).glob("*.py"))}


def imported(path: Path, known: set[str], *, top_level_only: bool = False) -> set[str]:
    """The catalog modules ``path`` imports (``from catalog.jobs import claims`` names catalog.jobs.claims)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def graph() -> dict[str, set[str]]:
    """Every catalog module's imports of catalog modules, those inside functions included."""
    paths = {module_name(path): path for path in sorted(CATALOG.rglob("*.py")) if "migrations" not in path.parts}
    return {name: imported(path, set(paths)) - {name} for name, path in paths.items()}


def ours(name: str) -> bool:
    return name.startswith(("catalog.ingest", "catalog.jobs"))


def test_ingestion_never_imports_the_job_layer():
    for name, deps in graph().items():
        if name.startswith("catalog.ingest."):
            assert not {d for d in deps if d.startswith("catalog.jobs")}, name


def test_each_job_module_imports_only_the_layers_below_it_and_only_at_the_top():
    jobs = modules("jobs")
    assert set(jobs) == {"catalog.jobs", *(f"catalog.jobs.{layer}" for layer in JOB_LAYERS)}
    for rank, layer in enumerate(JOB_LAYERS):
        path = jobs[f"catalog.jobs.{layer}"]
        everywhere = imported(path, set(jobs) - {"catalog.jobs"})
        at_top = imported(path, set(jobs) - {"catalog.jobs"}, top_level_only=True)
        assert everywhere == at_top, f"{layer} imports {everywhere - at_top} inside a function"
        allowed = {f"catalog.jobs.{below}" for below in JOB_LAYERS[:rank]}
        assert everywhere <= allowed, f"{layer} imports {everywhere - allowed} from its own layer or above"


def test_no_import_cycle_runs_through_the_ingest_or_job_modules():
    edges = graph()
    for start in filter(ours, edges):
        seen, todo = set(), list(edges[start])
        while todo:
            name = todo.pop()
            assert name != start, f"{start} imports itself in a circle"
            if name not in seen:
                seen.add(name)
                todo.extend(edges.get(name, ()))
