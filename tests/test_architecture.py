"""The package's layers, checked from the source (docs/ARCHITECTURE.md states the rules).

Every module under ``src/sbnn`` and ``runtime/src`` is parsed with ``ast``; every import counts,
also those inside functions. Each module belongs to one layer::

    runtime (sbnn_runtime) < method < models | verbs < deploy (+ sbnn.engine) < pipeline < cli

A layer imports only itself and the layers below it; ``models`` and ``verbs`` are peers that do
not import each other, with no exception: argument parsing and the command handlers live in
``sbnn.cli`` alone. The runtime imports only the standard
library, numpy and itself. ``from sbnn import NAME`` is resolved through the package's lazy
table to the module that defines NAME.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = (REPO / "src", REPO / "runtime" / "src")

LAYERS = ("runtime", "method", "models", "verbs", "deploy", "pipeline", "cli")
# layer -> the layers its modules may import (itself included)
ALLOWED = {
    "runtime": {"runtime"},
    "method": {"runtime", "method"},
    "models": {"runtime", "method", "models"},
    "verbs": {"runtime", "method", "verbs"},
    "deploy": {"runtime", "method", "models", "verbs", "deploy"},
    "pipeline": {"runtime", "method", "models", "verbs", "deploy", "pipeline"},
    "cli": set(LAYERS),
}
RUNTIME_THIRD_PARTY = {"numpy", "sbnn_runtime"}
# optional extras of sbnn-runtime (runtime/pyproject.toml): each allowed only in its module
RUNTIME_EXTRAS = {"sbnn_runtime.lower_onnx": {"onnx"}}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of this repository; None for anything else (or the
    lazy package top ``sbnn``, which imports nothing when imported)."""
    parts = module.split(".")
    if parts[0] == "sbnn_runtime":
        return "runtime"
    if parts[0] != "sbnn" or len(parts) == 1:
        return None
    if parts[1] == "engine":
        return "deploy"
    if parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"module {module!r} is in no layer; add it to tests/test_architecture.py "
                         "and docs/ARCHITECTURE.md")


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        for path in sorted(root.rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _lazy_target(name: str) -> str | None:
    import sbnn

    if name in sbnn._LAZY:
        return sbnn._LAZY[name]
    if name in sbnn._MODULES:
        return sbnn._MODULES[name]
    return None


def imports_of(module: str, source: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, enclosing function or None, line)`` for every import in ``source``."""
    is_pkg = MODULES.get(module, Path()).name == "__init__.py"
    found: list[tuple[str, str | None, int]] = []

    class Visitor(ast.NodeVisitor):
        def __init__(self):
            self.func: list[str] = []

        def visit_FunctionDef(self, node):
            self.func.append(node.name)
            self.generic_visit(node)
            self.func.pop()

        visit_AsyncFunctionDef = visit_FunctionDef

        def add(self, target: str, line: int):
            found.append((target, self.func[-1] if self.func else None, line))

        def visit_Import(self, node):
            for a in node.names:
                self.add(a.name, node.lineno)

        def visit_ImportFrom(self, node):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_pkg else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            if base == "__future__":
                return
            for a in node.names:
                full = f"{base}.{a.name}"
                if base == "sbnn":  # the lazy top: resolve to the defining module
                    self.add(_lazy_target(a.name) or "sbnn", node.lineno)
                elif full in MODULES:
                    self.add(full, node.lineno)
                else:
                    self.add(base, node.lineno)

    Visitor().visit(ast.parse(source))
    return found


def layer_violations(module: str, source: str) -> list[str]:
    here = layer_of(module)
    if here is None:
        return []
    bad = []
    for target, func, line in imports_of(module, source):
        there = layer_of(target)
        if there is None or there in ALLOWED[here]:
            continue
        where = f" (in {func}())" if func else ""
        bad.append(f"{module}:{line}{where}: {here} imports {there} ({target})")
    return bad


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 30
    layers = {m: layer_of(m) for m in MODULES}
    assert {m for m, lay in layers.items() if lay is None} == {"sbnn"}  # the lazy package top
    assert set(layers.values()) - {None} == set(LAYERS)


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for module, path in MODULES.items():
        bad += layer_violations(module, path.read_text(encoding="utf-8"))
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


@pytest.mark.parametrize("module,source,match", [
    ("sbnn.method.layers", "def f():\n    from sbnn.pipeline import train\n",
     "method imports pipeline"),
    ("sbnn.verbs.prune", "import sbnn.models.fmnist\n", "verbs imports models"),
    ("sbnn.models.fmnist", "from sbnn.verbs.prune import prune_\n", "models imports verbs"),
    ("sbnn.method.primitives", "from sbnn import load_model\n", "method imports pipeline"),
    ("sbnn.deploy.export", "from sbnn.pipeline.runs import load_model\n",
     "deploy imports pipeline"),
    ("sbnn.deploy.export", "def helper():\n    from sbnn.pipeline.data import DATASETS\n",
     "deploy imports pipeline"),
    ("sbnn.engine", "from sbnn.pipeline import evaluate\n", "deploy imports pipeline"),
    ("sbnn_runtime.ops", "from sbnn.method import primitives\n", "runtime imports method"),
    ("sbnn.pipeline.train", "from sbnn.cli import main\n", "pipeline imports cli"),
])
def test_the_checker_catches_each_kind_of_break(module, source, match):
    bad = layer_violations(module, source)
    assert len(bad) == 1 and match in bad[0], bad


def test_no_command_handler_outside_the_cli():
    """Domain modules expose plain functions: no ``add_parser`` or ``_cmd`` outside sbnn.cli, and
    a handler's import of the pipeline from deploy is refused like any other."""
    assert layer_violations("sbnn.deploy.export",
                            "def _cmd(args):\n    from sbnn.pipeline.runs import load_model\n")
    bad = []
    for module, path in MODULES.items():
        if module.startswith("sbnn.cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in ("add_parser", "_cmd"):
                bad.append(f"{module}:{node.lineno}: {node.name}")
            if isinstance(node, ast.Attribute) and node.attr == "add_argument" and \
                    not module.startswith("sbnn_runtime.__main__"):
                bad.append(f"{module}:{node.lineno}: add_argument")
    assert not bad, "argument parsing outside sbnn.cli:\n" + "\n".join(bad)


def test_runtime_imports_only_stdlib_numpy_and_itself():
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("sbnn_runtime"):
            continue
        for target, _, line in imports_of(module, path.read_text(encoding="utf-8")):
            top = target.split(".")[0]
            if top in sys.stdlib_module_names or top in RUNTIME_THIRD_PARTY or \
                    top in RUNTIME_EXTRAS.get(module, ()):
                continue
            bad.append(f"{module}:{line}: imports {target}")
    assert not bad, "\n".join(bad)


def test_runtime_tests_import_only_stdlib_numpy_pytest_and_the_runtime():
    """runtime/tests run in a venv with numpy alone (.ci/run): no torch, no sbnn there."""
    bad = []
    tests = sorted((REPO / "runtime" / "tests").rglob("*.py"))
    assert tests
    siblings = {p.stem for p in tests}  # helpers shared between the runtime's own test files
    for path in tests:
        for target, _, line in imports_of(path.stem, path.read_text(encoding="utf-8")):
            top = target.split(".")[0]
            if top in sys.stdlib_module_names or top in RUNTIME_THIRD_PARTY | {"pytest"} | siblings:
                continue
            bad.append(f"{path.relative_to(REPO)}:{line}: imports {target}")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_modules():
    """``from sbnn.x import _y`` or ``x._y`` on an imported sbnn module: use a public name."""
    bad = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                ours = node.module.split(".")[0] in ("sbnn", "sbnn_runtime")
                for a in node.names:
                    private = a.name.startswith("_") and not a.name.startswith("__")
                    # a package's own compiled extension is the one private name it may import
                    own_ext = node.module == "sbnn_runtime" and a.name == "_core" and \
                        module == "sbnn_runtime.native"
                    if ours and private and not own_ext:
                        bad.append(f"{module}:{node.lineno}: from {node.module} import {a.name}")
                    if ours:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in ("sbnn", "sbnn_runtime"):
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{module}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    """Module -> modules of the tree it imports (package faces ``__init__`` left out, as the
    lazy top and the docstring-only subpackages import nothing)."""
    pkgs = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    g = {}
    for module, path in MODULES.items():
        deps = set()
        for target, _, _ in imports_of(module, path.read_text(encoding="utf-8")):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module and target not in pkgs:
                deps.add(target)
        g[module] = deps
    return g


def find_circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Each circle a depth-first walk of ``g`` closes, as the list of its modules."""
    state: dict[str, int] = {}  # 1: on the walk's stack, 2: done
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                circles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return circles


def test_no_import_circle():
    assert find_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c", "a"]]
    assert find_circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    circles = find_circles(_graph())
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def _run(code: str, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=True)


LOADED = "import sys; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in " \
         "('sbnn', 'sbnn_runtime', 'torch'))))"


@pytest.mark.parametrize("module,never", [
    ("sbnn", ("sbnn.", "torch")),  # the package top is lazy: nothing below it, no torch
    ("sbnn.method.primitives", ("sbnn.models", "sbnn.verbs", "sbnn.deploy", "sbnn.pipeline",
                                "sbnn.cli", "sbnn.engine")),
    ("sbnn.verbs.stats", ("sbnn.models", "sbnn.deploy", "sbnn.pipeline", "sbnn.cli")),
    ("sbnn.engine", ("torch", "sbnn.method", "sbnn.verbs", "sbnn.deploy", "sbnn.pipeline")),
])
def test_importing_a_module_loads_only_its_layers(module, never):
    loaded = _run(f"import {module}; {LOADED}").stdout.split()
    assert module in loaded
    hit = [m for m in loaded if m.startswith(never) and m != module]
    assert not hit, f"import {module} loaded {hit}"


def test_runtime_import_does_not_touch_torch():
    err = _run("import sbnn_runtime", "-X", "importtime").stderr
    names = [ln.rsplit("|", 1)[-1].strip() for ln in err.splitlines() if "|" in ln]
    assert "sbnn_runtime" in names
    assert not [n for n in names if n.split(".")[0] == "torch"], "sbnn_runtime imported torch"


def test_the_lazy_package_top_names_real_definitions():
    """Every ``sbnn.NAME`` of the lazy table is defined where the table says."""
    import importlib

    import sbnn

    for name, module in sbnn._LAZY.items():
        assert hasattr(importlib.import_module(module), name), f"{module} has no {name}"
    for name, module in sbnn._MODULES.items():
        assert importlib.import_module(module).__name__ == module, name
    assert sorted(sbnn.__all__) == sorted(set(sbnn._LAZY) | set(sbnn._MODULES))
