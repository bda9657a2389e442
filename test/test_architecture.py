"""The package layout keeps its layers: no import circles, and a core free of transports and tooling.

Circles are found statically over every import statement, the lazy ones inside functions
included (a lazy import is how a circle usually hides), and dynamically by importing every
module in a fresh interpreter.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "anomaly_seg_ros"

#: What the transport-free core must never pull in (issue 15; docs/architecture.md).
CORE_FORBIDDEN = (
    "rclpy",
    "rosbags",
    "matplotlib",
    "tensorboard",
    "anomaly_seg_ros.training",
    "anomaly_seg_ros.ros",
    "anomaly_seg_ros.replay",
    "anomaly_seg_ros.evaluation",
    "anomaly_seg_ros.tools",
)


#: Layer of each package, lowest first (docs/architecture.md); an import may only point to a lower layer.
LAYERS = {
    "common": 0,
    "models": 1,
    "metrics": 1,
    "scoring": 2,
    "inference": 2,
    "losses": 3,
    "core": 4,
    "data": 4,
    "ros": 5,
    "evaluation": 6,
    "training": 6,
    "replay": 7,
    "benchmarking": 8,
    "tools": 9,
}
#: Modules at the package root: the package itself and the aliases kept for users' imports.
ROOT_ALIASES = {"anomaly_seg_ros", "anomaly_seg_ros.perception", "anomaly_seg_ros.config", "anomaly_seg_ros.errors"}


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports (a name imported from a package counts as the submodule if one exists)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            graph[name].update(target for target in targets if target in modules and target != name)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_tarjan_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back():
    circles = strongly_connected(import_graph(module_files()))
    assert circles == [], "import circles (every arrow must point to a lower layer): " + "; ".join(
        " <-> ".join(circle) for circle in circles
    )


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point to the same layer of another package, or upwards."""
    found = []
    for module, targets in graph.items():
        if module in ROOT_ALIASES:
            continue
        package = module.split(".")[1]
        for target in targets:
            other = target.split(".")[1] if target not in ROOT_ALIASES else None
            if other is None:
                found.append(f"{module} -> {target} (import the module itself, not the root alias)")
            elif other != package and LAYERS[other] >= LAYERS[package]:
                found.append(f"{module} (layer {LAYERS[package]}) -> {target} (layer {LAYERS[other]})")
    return sorted(found)


def test_every_package_has_a_layer():
    packages = {name.split(".")[1] for name in module_files() if name not in ROOT_ALIASES}
    assert packages == set(LAYERS)


def test_imports_point_to_lower_layers_only():
    assert layer_violations(import_graph(module_files())) == []


def test_layer_check_catches_an_upward_import():
    graph = {
        "anomaly_seg_ros.core.perception": {"anomaly_seg_ros.replay.runner"},
        "anomaly_seg_ros.replay.runner": set(),
    }
    assert layer_violations(graph) == [
        "anomaly_seg_ros.core.perception (layer 4) -> anomaly_seg_ros.replay.runner (layer 7)"
    ]


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_every_module_imports_in_a_fresh_interpreter():
    optional = {"rclpy": ("anomaly_seg_ros.ros.node", "anomaly_seg_ros.ros.graph")}
    skip = [
        m for dependency, modules in optional.items() if importlib.util.find_spec(dependency) is None for m in modules
    ]
    names = [name for name in module_files() if not any(name.startswith(prefix) for prefix in skip)]
    # Each module in the order that a user might import it first: alone, in a clean interpreter
    # would be best but costs ~90 torch imports; importing them one by one from the leaves of the
    # file listing upwards still trips any circle that depends on which side loads first.
    code = (
        "import importlib, json, sys\n"
        f"names = {names!r}\n"
        "failed = {}\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed[name] = f'{type(error).__name__}: {error}'\n"
        "print(json.dumps(failed))\n"
    )
    result = _fresh_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("entry", ["anomaly_seg_ros.core.perception", "anomaly_seg_ros.perception"])
def test_core_imports_no_transport_plotting_or_training(entry):
    code = (
        "import json, sys\n"
        f"import {entry}\n"
        f"forbidden = {CORE_FORBIDDEN!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in forbidden))))\n"
    )
    result = _fresh_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_core_guard_detects_a_forbidden_import():
    """The core check itself can fail: importing the replay package pulls in rosbags."""
    code = "import json, sys\nimport anomaly_seg_ros.replay\nprint(json.dumps('rosbags' in sys.modules))\n"
    result = _fresh_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) is True
