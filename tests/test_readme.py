"""The README and docs/ stay true: the key table is generated from the code, commands and links resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from typing import Dict, List, Set

import pytest

from scripts.config_table import page_block, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
README_MAX_LINES = 300
#: Folders of a developer's machine that must never appear in a committed page or table.
MACHINE_PATHS = re.compile(r"/(?:work|root|tmp|home)/")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _doc_files(*extensions: str) -> List[str]:
    found = []
    for folder, _, names in os.walk(DOCS):
        found += [os.path.join(folder, n) for n in sorted(names) if n.endswith(extensions)]
    return sorted(found)


README = os.path.join(ROOT, "README.md")
PAGES = [README] + _doc_files(".md")


def _without_code(text: str) -> str:
    """``text`` with fenced code blocks and inline code removed (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """The anchor of a heading, as Python-Markdown's toc (mkdocs) and GitHub make it for our headings."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: str) -> Set[str]:
    headings = re.findall(r"^#{1,6} (.+?)\s*$", re.sub(r"^```.*?^```", "", _read(path), flags=re.M | re.S), re.M)
    return {_slug(h) for h in headings}


def _links(path: str) -> Dict[str, str]:
    """Relative link target -> the file it resolves to, for every markdown link of a page."""
    out = {}
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(_read(path))):
        if not re.match(r"[a-z]+:", target):
            out[target] = os.path.normpath(os.path.join(os.path.dirname(path), target.split("#")[0]))
    return out


def test_config_table_lists_every_key():
    page = _read(os.path.join(DOCS, "configuration.md"))
    assert page_block(page) == table(), "run: python scripts/config_table.py --write"


def test_readme_is_short_and_starts_with_what_a_newcomer_can_run():
    text = _read(README)
    assert len(text.splitlines()) <= README_MAX_LINES, "move the details into docs/ (README is the way in)"
    first_block = re.search(r"^```bash\n(.*?)^```", text, flags=re.M | re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"], "the first commands must run without data or weights"
    first_python = text.index("python train.py")
    assert "source .venv/bin/activate" in text[:first_python], "say how to use .venv before the first python"
    assert "tensorboard --logdir" in text


@pytest.mark.parametrize("path", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(path):
    for target, resolved in _links(path).items():
        assert os.path.exists(resolved), f"{os.path.relpath(path, ROOT)}: broken link {target}"
        if "#" in target and resolved.endswith(".md"):
            anchor = target.split("#", 1)[1]
            assert anchor in _anchors(resolved), f"{os.path.relpath(path, ROOT)}: no heading for {target}"
    for anchor in re.findall(r"\]\(#([^)]+)\)", _without_code(_read(path))):
        assert anchor in _anchors(path), f"{os.path.relpath(path, ROOT)}: no heading for #{anchor}"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_commands_in_the_docs_exist(path):
    text = _read(path)
    makefile = _read(os.path.join(ROOT, "Makefile"))
    for target in set(re.findall(r"(?:^|`)make ([\w-]+)", text, flags=re.M)):
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"no make target {target}"
    for script in set(re.findall(r"(?:python|bash) ([\w/]+\.(?:py|sh))", text)):
        assert os.path.isfile(os.path.join(ROOT, script)), script
    for module in set(re.findall(r"python -m ((?:usb_cfsg|scripts|benchmarks)[\w.]*)", text)):
        base = os.path.join(ROOT, *module.split("."))
        assert os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__main__.py")), module
    for cfg in set(re.findall(r"(config/[\w/]+\.yaml)", text)):
        assert os.path.isfile(os.path.join(ROOT, cfg)), cfg


def test_ci_runs_what_the_readme_promises():
    ci = _read(os.path.join(ROOT, ".ci", "run"))
    text = _read(README)
    for step in ("make lint", "make docs", "make test"):
        assert step in ci and step in text, step


@pytest.mark.parametrize("path", [README] + _doc_files(".md", ".csv", ".json", ".yml", ".yaml", ".txt", ".png"))
def test_no_machine_paths_in_the_docs(path):
    with open(path, "rb") as fh:
        found = MACHINE_PATHS.search(fh.read().decode("latin-1"))
    assert found is None, f"{os.path.relpath(path, ROOT)} holds a machine path ({found and found.group(0)}...)"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert os.path.isfile(tmp_path / "site" / "configuration.html")
    api = (tmp_path / "site" / "api" / "modules.html").read_text(encoding="utf-8")
    assert 'id="usb_cfsg.modules.semantic_filter.SemanticFilter"' in api, "the API pages hold no docstrings"
