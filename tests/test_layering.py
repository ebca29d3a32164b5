"""The packages layer bottom-up (trainables -> analysis -> tune_jobs) and no modules import each other in a cycle.

Every import counts, module-level or inside a function: a lazy import still ties two modules together.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("trainables", "analysis", "tune_jobs")  # each may import only itself and those before it


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in LAYERS:
        for file in (ROOT / package).rglob("*.py"):
            name = ".".join(file.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = file
    return modules


def imports_of(file: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `file` imports (the longest known prefix of each imported name)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(file, modules) - {name} for name, file in modules.items()}


def test_packages_import_only_themselves_and_the_layers_below():
    rank = {package: i for i, package in enumerate(LAYERS)}
    upward = [f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
              if rank[target.split(".")[0]] > rank[module.split(".")[0]]]
    assert upward == []


def test_no_import_cycles():
    graph = import_graph()
    # A package's __init__ importing its own submodules is not a cycle between modules.
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    cycles = []
    for start in edges:
        seen, todo = set(), list(edges[start])
        while todo:
            module = todo.pop()
            if module == start:
                cycles.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo.extend(edges[module])
    assert cycles == []


def test_the_check_sees_a_real_violation(tmp_path):
    """The scan is not vacuous: an upward import in a trainables module is found."""
    modules = project_modules()
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tune_jobs.spec import load_spec\n")
    assert imports_of(bad, modules) == {"tune_jobs.spec"}
