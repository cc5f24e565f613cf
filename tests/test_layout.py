"""The house rules the code keeps: each task named in one declaration, small modules, one-way imports."""

import ast
from pathlib import Path

import yaml

from frozenrep.tasks import TASK_NAMES
from workspace import REPO

LIBRARY = REPO / "src" / "frozenrep"
OWN_PACKAGES = ("data", "synthetic", "heads", "evaluation", "tasks")  # each task's own module in each


def library_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        modules[".".join(parts).removesuffix(".__init__")] = path
    return modules


def test_a_tasks_name_is_a_literal_only_in_the_declarations_and_its_own_files():
    own = {LIBRARY / "tasks" / "__init__.py"}
    found = []
    for path in library_modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in TASK_NAMES and path not in own and not any(
                    path == LIBRARY / package / f"{node.value}.py" for package in OWN_PACKAGES):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "task names spelled outside src/frozenrep/tasks/__init__.py:\n" + "\n".join(found)


def test_every_task_has_its_own_files_and_schema_sections():
    schema = yaml.safe_load((REPO / "params" / "schemas" / "config.schema.yaml").read_text())
    for task in TASK_NAMES:
        for package in OWN_PACKAGES:
            assert (LIBRARY / package / f"{task}.py").is_file(), f"{task}: no src/frozenrep/{package}/{task}.py"
        assert task in schema["properties"] and task in schema["properties"]["datasets"]["properties"], task
    assert schema["properties"]["tasks"]["items"]["enum"] == list(TASK_NAMES)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in [*LIBRARY.rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_library_imports_have_no_loops():
    modules = library_modules()
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("frozenrep"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[name] |= {t for t in targets if t in modules and t != name}

    def loop_from(start, node, seen):
        for nxt in edges[node]:
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                rest = loop_from(start, nxt, seen)
                if rest:
                    return [node, *rest]
        return None

    loops = [loop for name in modules if (loop := loop_from(name, name, set()))]
    assert not loops, loops[0]
    # the ground floor imports nothing of frozenrep; nothing imports a command-line module
    for ground in ("frozenrep.io", "frozenrep.progress", "frozenrep.randomness", "frozenrep.runtime",
                   "frozenrep.paths"):
        assert not edges[ground], (ground, edges[ground])
    assert not [n for n, e in edges.items() if any(t.startswith("frozenrep.cli") for t in e)]
