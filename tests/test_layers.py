"""The layers point one way, and a module's imports prove it.

Every module of harness/, suites/ and the crosvm double (tests/crosvm_double) is
declared in a layer below; each import (at the top of a module or inside a
function, `if TYPE_CHECKING:` included) may only point to its own layer or one
below, there is no import cycle at all, and an import inside a function is
allowed only where it is listed with its reason. A new module must be given a
layer here before this test passes: where it belongs is a decision, not an accident.

harness (top to bottom):

    cli        the command line: parses arguments, nothing else
    app        the commands (what `harness run`, `plan`, `doctor`... do)
    runner     the scheduler, what a launch needs from the host (the KVM verdict), and how
               each test's guest starts (restored from a snapshot, or booted)
    tests      what the runner runs in a guest: the suites, tests.json programs, Fuchsia's
               serial tester and boot tests
    suite api  what a suite author writes against: @guest_test, TestContext, the Guest protocol
    guest      a booted guest: console + engine + lifecycle
    core       engines, console, profiles, images, parsers, reports, the plan
    models     results, environments, tests.json, product bundles, errors

A test (tests/) may import anything; the crosvm double may import nothing of the
harness (it stands in for crosvm, and must not share the harness's mistakes).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Highest first. A module's layer is that of the longest prefix naming it.
LAYERS: Sequence[tuple[str, Sequence[str]]] = (
    ("cli", ("harness.cli", "harness.__main__")),
    ("app", ("harness.app",)),
    ("runner", ("harness.runner", "harness.verdicts", "harness.accel", "harness.kvmprobe",
                "harness.snapshot")),
    ("tests", ("suites", "harness.programs", "harness.fuchsia.boottest",
               "harness.fuchsia.serialtester")),
    ("suite api", ("harness.suite",)),
    ("guest", ("harness.guest", "harness.interactive")),
    ("core", ("harness.engines", "harness.console", "harness.profiles",
              "harness.images.*", "harness.parsers", "harness.parse_log", "harness.logblocks",
              "harness.fuchsia.tefmocheck", "harness.fuchsia.emulator", "harness.report",
              "harness.stability",
              "harness.repro", "harness.plan", "harness.disks", "harness.inventory",
              "harness.hostcpu", "harness.hostnet", "harness.outputs", "harness.recorder",
              "harness.workdirs", "harness.signals", "harness.stoptoken",
              "harness.snapshot_store", "harness.overlays")),
    ("models", ("=harness", "=harness.fuchsia", "harness.fuchsia.build", "harness.results",
                "harness.environments", "harness.spec", "harness.errors", "harness.exits",
                "harness.textsafe", "harness.cache", "=harness.images", "harness.images.model",
                "harness.expected_devices", "harness.folders", "harness.jsonfile")),
)

DOUBLE_LAYERS: Sequence[tuple[str, Sequence[str]]] = (
    ("entry point", ("crosvm_double.main",)),
    ("the VM and its control", ("crosvm_double.vm", "crosvm_double.control")),
    ("checks, QMP, faults", ("crosvm_double.config", "crosvm_double.qmp",
                             "crosvm_double.faults", "crosvm_double.triple_fault")),
    ("the command line", ("crosvm_double.cmdline",)),
    ("serde_keyvalue", ("crosvm_double.keyvalues",)),
    ("base", ("=crosvm_double", "crosvm_double.base")),
)

# Imports inside a function: each must point down, and say why it is not at the top.
NESTED_ALLOWED = {
    ("harness.cli", "harness.app"):
        "`harness --help` starts without anyio, pexpect and the engines (0.1 s, not 0.8 s)",
}


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    nested: bool

    def __str__(self) -> str:
        where = "inside a function" if self.nested else "at the top"
        return f"{self.source} -> {self.target} (line {self.line}, {where})"


def modules(base: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((base / package).rglob("*.py")):
        name = ".".join(path.relative_to(base).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


HARNESS = {**modules(ROOT, "harness"), **modules(ROOT, "suites")}
DOUBLE = modules(ROOT / "tests", "crosvm_double")


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """Import statements that run when the module is imported (not inside a function)."""
    top: set[int] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef |
                                              ast.Lambda)
            if isinstance(child, ast.Import | ast.ImportFrom) and not inner:
                top.add(id(child))
            visit(child, inner)

    visit(tree, False)
    return top


def imports(name: str, path: Path, known: Iterable[str]) -> Iterator[Edge]:
    """Every edge from `name` to a module of `known`, the packages an import runs too."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top = _top_level_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in set(targets):
            # Importing a.b.c runs a and a.b first (their __init__), unless they are the
            # importer's own packages, which are running already.
            chain = target.split(".")
            for i in range(1, len(chain) + 1):
                module = ".".join(chain[:i])
                if module in known and module != name and not name.startswith(module + "."):
                    yield Edge(name, module, node.lineno, id(node) not in top)


def layer_of(name: str, layers: Sequence[tuple[str, Sequence[str]]]) -> int | None:
    """The index of `name`'s layer (0 is the top), by the longest pattern naming it; None:
    undeclared. "a.b" names a.b and what is in it, "=a.b" the module (or package __init__)
    a.b alone, "a.b.*" only what is in it."""
    best: tuple[int, int] | None = None
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if pattern.startswith("="):
                hit = name == pattern[1:]
            elif pattern.endswith(".*"):
                hit = name.startswith(pattern.removesuffix("*"))
            else:
                hit = name == pattern or name.startswith(pattern + ".")
            if hit and (best is None or len(pattern) > best[1]):
                best = (index, len(pattern))
    return best[0] if best is not None else None


def all_edges(mods: dict[str, Path]) -> list[Edge]:
    return [e for name, path in mods.items() for e in imports(name, path, mods)]


def upward(edges: Iterable[Edge], layers: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    problems = []
    for e in edges:
        source, target = layer_of(e.source, layers), layer_of(e.target, layers)
        assert source is not None and target is not None
        if target < source:
            problems.append(f"{e}: {layers[source][0]} imports {layers[target][0]}, a layer "
                            f"above it")
    return problems


def cycle(edges: Iterable[Edge]) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node)
            if found:
                return found
    return None


def test_every_module_has_a_layer() -> None:
    assert HARNESS and DOUBLE
    undeclared = [m for m in HARNESS if layer_of(m, LAYERS) is None]
    undeclared += [m for m in DOUBLE if layer_of(m, DOUBLE_LAYERS) is None]
    assert not undeclared, f"give these modules a layer in {__file__}: {undeclared}"


def test_no_import_points_up() -> None:
    problems = upward(all_edges(HARNESS), LAYERS) + upward(all_edges(DOUBLE), DOUBLE_LAYERS)
    assert not problems, "\n".join(problems)


def test_no_import_cycle() -> None:
    for mods in (HARNESS, DOUBLE):
        found = cycle(all_edges(mods))
        assert found is None, " -> ".join(found or [])


def test_imports_inside_functions_are_the_listed_ones() -> None:
    nested = {(e.source, e.target) for e in all_edges(HARNESS) + all_edges(DOUBLE) if e.nested}
    assert nested <= set(NESTED_ALLOWED), (
        f"imports inside functions: {sorted(nested - set(NESTED_ALLOWED))}; fix the layering "
        f"instead, or list one that only saves start-up time, with its reason")


def test_suites_know_nothing_of_engines_or_the_runner() -> None:
    """Suites ask the Guest; what engine runs it and how is not theirs to know."""
    forbidden = ("harness.engines", "harness.runner", "harness.guest", "harness.accel")
    found = [str(e) for e in all_edges(HARNESS) if e.source.startswith("suites")
             and any(e.target == f or e.target.startswith(f + ".") for f in forbidden)]
    assert not found, "\n".join(found)


def test_the_double_imports_nothing_of_the_harness() -> None:
    for name, path in DOUBLE.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for imported in names:
                assert imported.split(".")[0] not in ("harness", "suites", "tests"), (
                    f"{name} imports {imported}")


def test_the_checker_sees_nested_and_upward_imports(tmp_path: Path) -> None:
    """The checks above can fail: a planted upward import inside a function is found."""
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from harness import runner\n")
    (pkg / "runner.py").write_text("from harness.errors import f\n")
    mods = modules(tmp_path, "harness")
    edges = all_edges(mods)
    assert [str(e) for e in edges if e.nested] == [
        "harness.errors -> harness.runner (line 2, inside a function)"]
    assert upward(edges, LAYERS) == [
        "harness.errors -> harness.runner (line 2, inside a function): models imports "
        "runner, a layer above it"]
    assert cycle(edges) == ["harness.errors", "harness.runner", "harness.errors"]
