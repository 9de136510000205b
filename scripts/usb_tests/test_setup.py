"""setup.py reads requirements.txt without pkg_resources and ships the package data."""

import ast
import fnmatch
import runpy
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def setup_kwargs(monkeypatch):
    """The keyword arguments setup.py passes to setuptools.setup()."""
    monkeypatch.chdir(ROOT)
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return setup.call_args.kwargs


def test_setup_py_needs_no_pkg_resources(monkeypatch):
    tree = ast.parse((ROOT / "setup.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "pkg_resources" not in imported
    wanted = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert setup_kwargs(monkeypatch)["install_requires"] == [w for w in wanted if w]


def test_every_data_file_of_the_package_is_package_data(monkeypatch):
    kwargs = setup_kwargs(monkeypatch)
    patterns = kwargs.get("package_data") or {}
    missing = []
    for path in sorted((ROOT / "semilearn").rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(ROOT)
        owners = [p for p in rel.parents if (ROOT / p / "__init__.py").is_file()]
        package, inside = ".".join(owners[0].parts), rel.relative_to(owners[0]).as_posix()
        if not any(fnmatch.fnmatch(inside, pat) for pat in patterns.get(package, [])):
            missing.append(str(rel))
    assert missing == [], f"data files missing from setup.py's package_data: {missing}"
