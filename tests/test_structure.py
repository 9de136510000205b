"""The package's structure: layers that import only downward, no import circle (importlib calls included),
the data layer never imports tools, no developer tools inside."""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

import pytest

from usb_cfsg import algorithm_keys

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "usb_cfsg"
TOOLS = ROOT / "usb_cfsg_tools"

#: The runtime package's layers, lowest first. A module imports only modules of its own layer or of a
#: lower one (its own package's modules excepted: a package's ``__init__`` gathers its submodules).
#: The package root ``usb_cfsg`` (its ``__init__``: :func:`usb_cfsg.register`) sits above all of them:
#: it wires the layers together (importing ``evaluation`` fills the engine's run hooks).
LAYERS: Sequence[Sequence[str]] = (
    (
        "usb_cfsg.errors",
        "usb_cfsg.progress",
        "usb_cfsg.registry",
        "usb_cfsg.unknown_scores",
        "usb_cfsg.algorithm_keys",
        "usb_cfsg.console",
    ),
    ("usb_cfsg.modules",),
    ("usb_cfsg.nets",),
    ("usb_cfsg.datasets",),
    ("usb_cfsg.config",),
    ("usb_cfsg.engine",),
    ("usb_cfsg.evaluation",),
    ("usb_cfsg.algorithms",),
    ("usb_cfsg.cli", "usb_cfsg.interrupt"),  # interrupt: the commands' Ctrl-C message (reads checkpoints)
)
IMPORT_FUNCTIONS = ("import_module", "__import__")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: Declaration tables a module-level ``NAME = tuple(<table>)`` can take its strings from: the names of
#: the algorithms whose keys are declared (``usb_cfsg.algorithms._MODULES = tuple(ALGORITHMS)``).
DECLARED_TABLES: Dict[str, List[str]] = {"ALGORITHMS": list(algorithm_keys.ALGORITHMS)}


def _string_tuples(tree: ast.Module) -> Dict[str, List[str]]:
    """Module-level names bound to a tuple or list of string literals (``_MODULES = ("a", "b")``), or to
    ``tuple(T)`` of a table of :data:`DECLARED_TABLES`."""
    out: Dict[str, List[str]] = {}
    for node in tree.body:
        targets: List[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "tuple"
            and len(value.args) == 1
            and isinstance(value.args[0], ast.Name)
            and value.args[0].id in DECLARED_TABLES
        ):
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = DECLARED_TABLES[value.args[0].id]
            continue
        if isinstance(value, (ast.Tuple, ast.List)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts
        ):
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = [e.value for e in value.elts]  # type: ignore[union-attr]
    return out


def _values_of(name: str, chain: List[ast.AST], consts: Dict[str, List[str]]) -> Optional[List[str]]:
    """The strings variable ``name`` can hold where the call is: it loops over a literal (or a module-level
    literal tuple), or an enclosing ``if name in <literal>:`` admits only those; None when unknown."""

    def literal(node: ast.expr) -> Optional[List[str]]:
        if isinstance(node, ast.Name):
            return consts.get(node.id)
        if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts):
            return [str(e.value) for e in node.elts]  # type: ignore[attr-defined]
        return None

    for node in reversed(chain):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == name:
            return literal(node.iter)
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == name
            and isinstance(node.test.ops[0], ast.In)
        ):
            return literal(node.test.comparators[0])
    return None


def _dynamic_names(call: ast.Call, me: str, chain: List[ast.AST], consts: Dict[str, List[str]]) -> Optional[List[str]]:
    """Module names an ``importlib.import_module(...)`` / ``__import__(...)`` call can import, or None when its
    argument is neither a string literal nor an f-string of ``__name__`` and literal-bound names."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if not isinstance(arg, ast.JoinedStr):
        return None
    names = [""]
    for part in arg.values:
        if isinstance(part, ast.Constant):
            names = [n + str(part.value) for n in names]
            continue
        expr = part.value if isinstance(part, ast.FormattedValue) else None
        if isinstance(expr, ast.Name) and expr.id == "__name__":
            names = [n + me for n in names]
            continue
        values = _values_of(expr.id, chain, consts) if isinstance(expr, ast.Name) else None
        if values is None:
            return None
        names = [n + v for n in names for v in values]
    return names


def _is_import_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in IMPORT_FUNCTIONS


def _graph(roots: Sequence[Path] = (PACKAGE,), unresolved: Optional[List[str]] = None) -> Dict[str, Set[str]]:
    """Module -> the modules of ``roots`` it imports: import statements (inside functions too) and
    ``importlib.import_module`` / ``__import__`` calls. A package's ``__init__`` importing its submodules
    counts (``engine.plugin -> algorithms -> algorithms.cfsg_clip -> engine.plugin`` is a circle); a module
    importing its parent packages does not (they are initialised before it in any case). Calls whose
    module name cannot be worked out are appended to ``unresolved``."""
    files = [p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {_module(p) for p in files}
    graph: Dict[str, Set[str]] = {}
    for path in files:
        me = _module(path)
        pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        consts = _string_tuples(tree)
        found: Set[str] = set()
        todo: List[tuple] = [(tree, [])]
        while todo:
            node, chain = todo.pop()
            names: List[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            elif _is_import_call(node):
                dynamic = _dynamic_names(node, me, chain, consts)  # type: ignore[arg-type]
                if dynamic is None and unresolved is not None:
                    unresolved.append(f"{me}:{node.lineno}")  # type: ignore[attr-defined]
                names = dynamic or []
            for n in names:
                while n and n not in modules:
                    n = n.rpartition(".")[0]
                if n and n != me and not me.startswith(n + "."):  # a module's parents run before it anyway
                    found.add(n)
            todo.extend((child, [*chain, node]) for child in ast.iter_child_nodes(node))
        graph[me] = found
    return graph


def _reaches(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen: Set[str] = set()
    todo = list(graph[start])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, ()))
    return seen


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py's LAYERS: add it to one")


def test_every_dynamic_import_is_followed():
    unresolved: List[str] = []
    _graph((PACKAGE, TOOLS), unresolved)
    assert not unresolved, (
        f"import_module/__import__ calls whose module name the structure test cannot tell: {unresolved}"
    )


def test_dynamic_imports_are_edges_of_the_graph():
    graph = _graph()
    # the loop over _MODULES and register()'s loop over its literal tuple
    assert "usb_cfsg.algorithms.cfsg_clip" in graph["usb_cfsg.algorithms"]
    assert {"usb_cfsg.nets", "usb_cfsg.algorithms", "usb_cfsg.evaluation"} <= graph["usb_cfsg"]


def test_no_import_circle_in_the_package_or_its_tools():
    graph = _graph((PACKAGE, TOOLS))
    circles = sorted(m for m in graph if m in _reaches(graph, m))
    assert not circles, f"modules on an import circle: {circles}"


def test_layers_import_only_downward():
    graph = _graph()
    upward = sorted(
        f"{m} -> {n}"
        for m, deps in graph.items()
        if m != "usb_cfsg"
        for n in deps
        if n != "usb_cfsg" and _layer(n) > _layer(m)
    )
    assert not upward, f"imports up the layers (tests/test_structure.py LAYERS): {upward}"


@pytest.mark.parametrize("lower", ["usb_cfsg.engine", "usb_cfsg.config", "usb_cfsg.datasets", "usb_cfsg.nets"])
def test_the_engine_and_below_reach_neither_evaluation_nor_algorithms(lower):
    graph = _graph()
    for module in [m for m in graph if m == lower or m.startswith(lower + ".")]:
        reached = _reaches(graph, module)
        assert not [n for n in reached if n.startswith(("usb_cfsg.evaluation", "usb_cfsg.algorithms"))], module


def test_the_runtime_package_imports_no_tool():
    graph = _graph((PACKAGE, TOOLS))
    for module in [m for m in graph if m.startswith("usb_cfsg.") or m == "usb_cfsg"]:
        assert not [n for n in graph[module] if n.startswith("usb_cfsg_tools")], module
    # the algorithm keys are read without torch, semilearn or any other package module but errors and the
    # score declarations
    assert _reaches(graph, "usb_cfsg.algorithm_keys") <= {"usb_cfsg.errors", "usb_cfsg.unknown_scores"}
    assert _reaches(graph, "usb_cfsg.unknown_scores") <= {"usb_cfsg.errors"}


def test_no_developer_tool_or_generated_copy_in_the_runtime_package():
    assert not (PACKAGE / "upstream.py").exists() and (ROOT / "scripts" / "upstream.py").is_file()
    assert not list(PACKAGE.glob("*.json")), "a generated copy inside the package"
    assert not (PACKAGE / "compare.py").exists() and not (PACKAGE / "demo_clip.py").exists()
