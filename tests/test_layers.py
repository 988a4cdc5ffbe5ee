"""The layer contract: drainer's folders are layers, and a module imports only from its own layer or
the layers below it (every import counts: lazy ones inside functions and TYPE_CHECKING ones too).

    app      CLI, daemon, the runner, reports, demo       may import everything below
    act      the effects seam, the executor, drain methods, hooks, approval's fact gathering
    store    the SQLite state store and its local ledgers
    io       IMDS, ARM, HTTP servers, processes, safe files, locks, logging
    decide   the pure core: the model, the fold of a document, step, approval and floor rules
    config   the typed, frozen configuration
    base     errors, the Scheduled Events vocabulary, metrics' interface, text safety

``emulator`` is a separate tool: it imports only ``base``, and only ``app`` (the demo, the CLI) imports
it. The decide layer imports nothing that does IO (no HTTP, SQL, subprocess, clock reads are passed in).
There is no import cycle between modules. Erosion fails this test, with the offending import named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "drainer"
LAYERS = ("base", "config", "decide", "io", "store", "act", "app")
# What the pure layers may not import, whatever the layer rule says.
IO_MODULES = {"requests", "urllib3", "sqlite3", "subprocess", "socket", "azure", "apscheduler", "http"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names), with the line it does so on."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            found.append((node.lineno, node.module))
            # `from drainer.io import imds` imports the module drainer.io.imds
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "drainer" else None


def _drainer_imports(module: str) -> list[tuple[int, str]]:
    return [(line, name) for line, name in _imports(MODULES[module]) if name in MODULES]


def test_every_module_sits_in_a_layer() -> None:
    loose = [
        m
        for m in MODULES
        if _layer(m) not in (*LAYERS, "emulator") and m not in ("drainer", "drainer.__main__")
    ]
    assert not loose, f"modules outside every layer folder: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in LAYERS))
def test_imports_only_its_own_layer_or_below(module: str) -> None:
    mine = LAYERS.index(str(_layer(module)))
    bad = []
    for line, name in _drainer_imports(module):
        layer = _layer(name)
        if layer == "emulator":
            if _layer(module) != "app":
                bad.append(f"line {line}: {name} (only app may import the emulator)")
        elif layer in LAYERS and LAYERS.index(layer) > mine:
            bad.append(f"line {line}: {name} (layer {layer} is above {_layer(module)})")
    assert not bad, f"{module} climbs the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in ("base", "config", "decide")))
def test_pure_layers_do_no_io(module: str) -> None:
    bad = [
        f"line {line}: {name}"
        for line, name in _imports(MODULES[module])
        if name.split(".")[0] in IO_MODULES
        and not (module == "drainer.base.urls" and name.startswith("urllib3.util"))
    ]
    assert not bad, f"{module} imports IO:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "emulator"))
def test_emulator_stands_apart(module: str) -> None:
    bad = [
        f"line {line}: {name}"
        for line, name in _drainer_imports(module)
        if _layer(name) not in ("emulator", "base")
    ]
    assert not bad, f"{module} imports drainer beyond base:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    graph = {m: {n for _, n in _drainer_imports(m) if n != m} for m in MODULES}
    # a package's __init__ importing its own modules is not a cycle of layers
    for m, deps in graph.items():
        graph[m] = {
            d
            for d in deps
            if not (d.startswith(m + ".") or (m.startswith(d + ".") and d == m.rsplit(".", 1)[0]))
        }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
