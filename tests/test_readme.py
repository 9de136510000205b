"""The README stays true: its key table is generated from the code, its commands exist."""

import os
import re

from scripts.config_table import readme_block, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as fh:
        return fh.read()


README = _read("README.md")


def test_config_table_lists_every_key():
    assert readme_block(README) == table(), "run: python scripts/config_table.py --write"


def test_commands_in_readme_exist():
    makefile = _read("Makefile")
    for target in re.findall(r"^make (\w+)", README, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    for script in set(re.findall(r"python ([\w/]+\.py)", README)):
        assert os.path.isfile(os.path.join(ROOT, script)), script
    for cfg in set(re.findall(r"(config/[\w/]+\.yaml)", README)):
        assert os.path.isfile(os.path.join(ROOT, cfg)), cfg
    ci = _read(".ci", "run")
    assert "make test" in ci and "make test" in README
