"""The package's structure: no import circle, the data layer never imports tools, no developer tools inside."""

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "usb_cfsg"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> Dict[str, Set[str]]:
    """Module -> the package modules it imports (imports inside functions included; a package's own
    submodules and its parent packages not counted)."""
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {_module(p) for p in files}
    graph: Dict[str, Set[str]] = {}
    for path in files:
        me = _module(path)
        pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: List[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for n in names:
                while n and n not in modules:
                    n = n.rpartition(".")[0]
                if n and n != me and not n.startswith(me + ".") and not me.startswith(n + "."):
                    found.add(n)
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


def test_no_import_circle_in_the_package():
    graph = _graph()
    circles = sorted(m for m in graph if m in _reaches(graph, m))
    assert not circles, f"modules on an import circle: {circles}"


def test_the_data_layer_and_config_import_no_tool():
    graph = _graph()
    for layer in [m for m in graph if m.startswith("usb_cfsg.datasets")] + ["usb_cfsg.config"]:
        assert "usb_cfsg_tools.demo_clip" not in _reaches(graph, layer), layer
    # the algorithm keys are read without torch, semilearn or any other package module but errors
    assert _reaches(graph, "usb_cfsg.algorithm_keys") <= {"usb_cfsg.errors"}


def test_no_developer_tool_or_generated_copy_in_the_runtime_package():
    assert not (PACKAGE / "upstream.py").exists() and (ROOT / "scripts" / "upstream.py").is_file()
    assert not list(PACKAGE.glob("*.json")), "a generated copy inside the package"
