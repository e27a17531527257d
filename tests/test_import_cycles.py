"""No import cycles: each package imports alone in a fresh interpreter, module by module, and
the round loop and its collectors import in one direction only (rounds -> collect -> types)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedcore", "client_runtime", "aggregator", "device_profiles", "simulations", "deploy")
OPTIONAL = ("cupy", "ray", "onnx", "onnxruntime", "torch", "matplotlib")  # absent extras


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = {
    name: path
    for package in PACKAGES
    for name, path in _modules(package).items()
    if ".migrations" not in name
}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_in_a_fresh_interpreter(package):
    """Every module of the package imports (in a fresh interpreter, the package first);
    static cycles are the tests below."""
    names = sorted(n for n in _modules(package) if ".migrations" not in n)
    code = (
        "import importlib, json\n"
        "failed = {}\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps(failed))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    failed = {k: v for k, v in failed.items() if not any(f"'{m}'" in v for m in OPTIONAL)}
    assert not failed, failed


def _imports(name: str, path: Path, lazy: bool) -> set[str]:
    """Our modules ``name`` imports: at module level, or anywhere with ``lazy`` (never the
    ``if TYPE_CHECKING:`` blocks, which do not run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(name, path, node)
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            elif lazy or isinstance(node, ast.If | ast.Try):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [], False)

    visit(tree.body, True)
    # a module's own packages are initialised before it and are no edge (``from . import x``)
    ancestors = {name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)}
    return {m for m in found if m in MODULES and m != name and m not in ancestors}


def _absolute(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, relative ones (``from ..engine``) resolved."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return cycles


def test_no_module_level_import_cycle():
    graph = {name: _imports(name, path, lazy=False) for name, path in MODULES.items()}
    assert _cycles(graph) == []


ROUND_MODULES = [
    name
    for name in MODULES
    if name in ("aggregator.rounds", "aggregator.round_types", "aggregator.select")
    or name.startswith(
        (
            "aggregator.collect",
            "aggregator.secagg",
            "aggregator.strategies",
            "aggregator.updates",
            "aggregator.decode",
            "aggregator.fold",
            "aggregator.guard",
        )
    )
]


def _round_graph(paths: dict[str, Path]) -> dict[str, set[str]]:
    """What the round's modules import, function-level imports included."""
    return {name: _imports(name, paths[name], lazy=True) for name in ROUND_MODULES}


def test_the_round_and_its_collectors_import_one_way_even_lazily():
    """Function-level imports count here too: the old SecAgg round imported the round loop,
    which imported it back inside ``run_round``."""
    graph = _round_graph(MODULES)
    assert _cycles(graph) == []
    collectors = [name for name in ROUND_MODULES if name.startswith("aggregator.collect")]
    assert collectors and all("aggregator.rounds" not in graph[name] for name in collectors)


def test_the_checker_sees_relative_and_lazy_imports_and_finds_a_cycle(tmp_path):
    """The checks above would catch a cycle: relative imports resolve (a package's own parents
    are no edge), a function's import counts when lazy, and a collector that imports the round
    loop back inside a function closes a cycle."""
    sgd = _imports("fedcore.optim.sgd", MODULES["fedcore.optim.sgd"], lazy=False)
    assert {"fedcore.engine", "fedcore.optim.optimizer"} <= sgd and "fedcore.optim" not in sgd
    looped = tmp_path / "replies.py"
    source = MODULES["aggregator.collect.replies"].read_text(encoding="utf-8")
    looped.write_text(source + "\n\ndef _back():\n    from aggregator import rounds\n")
    assert "aggregator.rounds" not in _imports("aggregator.collect.replies", looped, lazy=False)
    graph = _round_graph({**MODULES, "aggregator.collect.replies": looped})
    [cycle] = _cycles(graph)
    assert {"aggregator.rounds", "aggregator.collect.replies"} <= set(cycle)
