"""The import graph of ``src/cspnet`` obeys the layer map: layers only point down, no cycles, no
imports of the package facade from inside the package, no private names across packages.

The graph is read with :mod:`ast` from the sources, so imports inside functions (the lazy ones
that keep ``import cspnet`` light) count as much as those at the top of a file, and nothing is
imported to compute it.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The layer map (bottom -> top), its one encoding. A module may import from its own layer or
# below. The longest matching prefix decides, so ``cspnet.detection.training`` (training code,
# the lead is folding it into ``cspnet.training``) sits above the rest of ``cspnet.detection``.
LAYERS: dict[str, int] = {
    # L0: pure facts and helpers, no model code
    "cspnet.fields": 0,
    "cspnet.io": 0,
    "cspnet.precision": 0,
    "cspnet.runtime": 0,
    "cspnet.progress": 0,
    "cspnet.cpu": 0,
    "cspnet.metadata": 0,
    "cspnet.ops": 0,
    # L1: nn building blocks
    "cspnet.layers": 1,
    # L2: weight-file readers and key converters
    "cspnet.convert": 2,
    # L3: backbones, detectors, registry, factory
    "cspnet.models": 3,
    # L4: data, detection data/loss/metrics/export graph, export writers, profiling
    "cspnet.data": 4,
    "cspnet.detection": 4,
    "cspnet.export": 4,
    "cspnet.profiling": 4,
    # L5: the training-checkpoint reader, inference engines
    "cspnet.trained": 5,
    "cspnet.inference": 5,
    # L6: training pipeline, evaluation
    "cspnet.training": 6,
    "cspnet.detection.training": 6,
    "cspnet.evaluation": 6,
    # L7: reports and the command line
    "cspnet.reports": 7,
    "cspnet.cli": 7,
}

# Known violations, each removed by the branch named beside it; the lead empties this list. Each
# entry is (importer, imported module, kind). An entry that no longer occurs fails
# test_the_allow_list_has_no_stale_entries, so the list cannot outlive the fixes.
ALLOWED: set[tuple[str, str, str]] = set()  # (importer, imported, rule) pairs tolerated for now: none

# Names that hold one rule each: assigned at the top level of exactly one module of src/cspnet
# (other modules import them). A second assignment is a copy that will drift.
ONE_HOME = ("BACKENDS", "BACKEND_PRECISIONS", "MODES", "PRECISIONS", "NECKS", "MAX_IMG_SIZE", "IMAGENET_MEAN",
            "IMAGENET_STD", "TORCHSCRIPT_METADATA")  # fmt: skip


@dataclass(frozen=True)
class Import:
    importer: str  # module that imports
    module: str  # module imported (a submodule when ``from pkg import submodule``)
    name: str | None  # the name taken by ``from module import name``
    line: int
    type_only: bool = False  # inside ``if TYPE_CHECKING:``: read by type checkers, never run

    def where(self) -> str:
        return f"{self.importer}:{self.line} imports {self.module}" + (f".{self.name}" if self.name else "")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _absolute(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """The lines of ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    type_only = _type_checking_lines(tree)
    for imp in _all_imports_of(module, path, tree):
        yield Import(imp.importer, imp.module, imp.name, imp.line, imp.line in type_only)


def _all_imports_of(module: str, path: Path, tree: ast.AST) -> Iterator[Import]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, path.name == "__init__.py", node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # ``from pkg import submodule`` imports the submodule
                yield Import(module, sub, None, node.lineno) if sub in MODULES else Import(
                    module, target, alias.name, node.lineno
                )
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield Import(module, node.args[0].value, None, node.lineno)
            elif node.args and isinstance(node.args[0], ast.JoinedStr):
                # f"cspnet.cli.{name}": counts as an import of the fixed prefix's package
                head = node.args[0].values[0]
                if isinstance(head, ast.Constant) and isinstance(head.value, str):
                    yield Import(module, head.value.rstrip("."), None, node.lineno)


IMPORTS = [imp for m, p in MODULES.items() for imp in _imports_of(m, p) if imp.module.split(".")[0] == "cspnet"]


def layer_key(module: str) -> str:
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    if not keys:
        raise AssertionError(f"{module} is not on the layer map in tests/test_layering.py: add it")
    return max(keys, key=len)


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def violations(imports: Iterable[Import] = IMPORTS) -> Iterator[tuple[Import, str]]:
    """(import, kind) for each import that breaks a rule; kind is 'upward', 'facade' or 'private'."""
    for imp in imports:
        if imp.importer == "cspnet":
            continue  # the facade itself re-exports from every layer, lazily
        if imp.module == "cspnet":
            # ``__version__`` is defined in the facade itself: it loads no other module
            if imp.name != "__version__":
                yield imp, "facade"
            continue
        if LAYERS[layer_key(imp.module)] > LAYERS[layer_key(imp.importer)]:
            yield imp, "upward"
        private = imp.name is not None and imp.name.startswith("_") and not imp.name.startswith("__")
        if private and package(imp.module) != package(imp.importer):
            yield imp, "private"
        elif any(part.startswith("_") and not part.startswith("__") for part in imp.module.split(".")):
            if package(imp.module) != package(imp.importer):
                yield imp, "private"


def test_every_module_is_on_the_layer_map() -> None:
    for module in MODULES:
        if module != "cspnet":
            layer_key(module)


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    # a guard against a parser that silently finds nothing: the lazy imports of the CLI and the
    # facade's re-exports are function-level or importlib calls
    pairs = {(i.importer, i.module) for i in IMPORTS}
    assert ("cspnet.cli.main", "cspnet.cli") in pairs  # importlib.import_module(f"cspnet.cli.{name}")
    assert ("cspnet.cli.export", "cspnet.export") in pairs or ("cspnet.cli.export", "cspnet.export.formats") in pairs
    assert len(IMPORTS) > 300


def test_the_rules_catch_what_they_name() -> None:
    cases = {
        Import("cspnet.ops.nms", "cspnet.models.factory", "create_model", 1): ["upward"],  # L0 -> L3
        Import("cspnet.export.formats", "cspnet.inference", "load_model", 1): ["upward"],  # L4 -> L5
        Import("cspnet.inference.model", "cspnet", "create_model", 1): ["facade"],
        Import("cspnet.models.darknet", "cspnet.convert.darknet", "_read_layer", 1): ["private"],
        Import("cspnet.cli.export", "cspnet.export", "export_model", 1): [],  # down is fine
        Import("cspnet.data.folder", "cspnet.detection.export", None, 1): [],  # within a layer
        Import("cspnet.convert.darknet", "cspnet.convert.checkpoint", "_FILE_READERS", 1): [],  # own package
        Import("cspnet.cli.main", "cspnet", "__version__", 1): [],
    }
    for imp, kinds in cases.items():
        assert [k for _, k in violations([imp])] == kinds, imp.where()


@pytest.mark.parametrize("kind", ["upward", "facade", "private"])
def test_no_import_breaks_the_layer_map(kind: str) -> None:
    found = [(imp, k) for imp, k in violations() if k == kind]
    bad = [
        f"{imp.where()} ({k}: L{LAYERS[layer_key(imp.importer)]} -> L{LAYERS[layer_key(imp.module)]})"
        if k == "upward"
        else f"{imp.where()} ({k})"
        for imp, k in found
        if (imp.importer, imp.module, k) not in ALLOWED
    ]
    assert not bad, "imports against the layer map (COMMON layer map; tests/test_layering.py):\n" + "\n".join(bad)


def test_the_allow_list_has_no_stale_entries() -> None:
    seen = {(imp.importer, imp.module, k) for imp, k in violations()}
    stale = sorted(ALLOWED - seen)
    assert not stale, f"fixed: remove from ALLOWED in tests/test_layering.py: {stale}"


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` (``a -> b``: a imports b), as a closed path; ``None`` if there is none."""
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    cycle = _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _edges(key) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    edges: dict[str, set[str]] = {key(m): set() for m in MODULES if m != "cspnet"}
    for imp in IMPORTS:
        if "cspnet" in (imp.importer, imp.module):
            continue  # the facade sits above everything; facade imports are tested above
        if imp.type_only:
            continue  # an annotation's import never runs, so it cannot close a loop at import time
        a, b = key(imp.importer), key(imp.module)
        if a != b:
            edges.setdefault(a, set()).add(b)
    return edges


def test_no_import_cycle_between_packages() -> None:
    cycle = _cycle(_edges(package))
    assert cycle is None, f"import cycle between packages: {' -> '.join(cycle)}"


def test_no_import_cycle_between_modules() -> None:
    # A package's __init__ importing its submodules is how re-exports work; a submodule importing
    # its own package's __init__ back (or two modules importing each other) closes a loop.
    cycle = _cycle(_edges(lambda m: m))
    assert cycle is None, f"import cycle between modules: {' -> '.join(cycle)}"


def _top_level_assignments(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_each_shared_vocabulary_has_one_home() -> None:
    homes: dict[str, list[str]] = {name: [] for name in ONE_HOME}
    for module, path in MODULES.items():
        for name in _top_level_assignments(path) & set(ONE_HOME):
            homes[name].append(module)
    copies = {name: where for name, where in homes.items() if len(where) > 1}
    assert not copies, f"defined in more than one module (keep one, import it elsewhere): {copies}"
    assert all(homes.values()), {name: where for name, where in homes.items() if not where}
