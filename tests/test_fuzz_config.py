"""Fuzzing the config loader: random keys, values and YAML documents end in a resolved config or in
our ConfigError, which train.py prints as one line (exit status 2) -- never another exception or a
traceback (issue 10, item 7). Bounded numbers of examples keep this to seconds.
"""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import train as train_cli
from usb_cfsg.config import base_specs, build_config
from usb_cfsg.errors import ConfigError, UsbCfsgError

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KEYS = sorted(base_specs())
TRICKY = [
    "none",
    "null",
    "~",
    "true",
    "false",
    "yes",
    "0",
    "-1",
    "1e309",
    "nan",
    "inf",
    "-inf",
    "[1, 2]",
    "{a: 1}",
    "",
    " ",
    "0x10",
    "1_000",
    "3.5",
    "fixmatch",
    "cfsg_clip",
    "open_clip",
    "RN50",
    "hf-hub:",
    "local-dir:/nonexistent",
    "ViT-B-16",
    "\n",
    "'quoted'",
    "--",
    "--c",
]
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12))
cli_values = st.one_of(st.sampled_from(TRICKY), st.text(max_size=16))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=16),
    st.sampled_from(TRICKY),
)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def resolve_or_our_error(argv, capsys) -> None:
    """build_config returns a config or raises our error; then train.py says it in one line, status 2."""
    try:
        args = build_config(argv)
    except UsbCfsgError:  # ConfigError, or RegistryError for an unknown algorithm
        capsys.readouterr()
        assert train_cli.cli(argv) == 2  # fails in the config step: nothing is built or trained
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        assert captured.out == ""
        return
    assert args.algorithm and args.num_classes >= 1 and args.num_train_iter >= 1
    for key in ("lr", "ema_m", "crop_ratio"):
        value = getattr(args, key)
        assert isinstance(value, float) and math.isfinite(value), (key, value)


@pytest.fixture(autouse=True)
def _quiet_console(monkeypatch):
    import logging

    log = logging.getLogger("usb_cfsg")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    yield
    for h in list(log.handlers):
        if h not in handlers:
            log.removeHandler(h)
    log.setLevel(level)
    log.propagate = propagate


@FUZZ
@given(pairs=st.lists(st.tuples(keys, cli_values), max_size=4), stray=st.lists(st.text(max_size=8), max_size=2))
def test_command_line_pairs(capsys, pairs, stray):
    argv = [tok for key, value in pairs for tok in (f"--{key}", value)] + stray
    resolve_or_our_error(argv, capsys)


@FUZZ
@given(document=st.dictionaries(keys, yaml_values, max_size=5))
def test_yaml_mappings(tmp_path_factory, capsys, document):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    resolve_or_our_error(["--c", str(path)], capsys)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=120),
        st.builds(lambda a, b: f"{a}:\n  - {b}\n---\n{b}: {a}", st.text(max_size=10), st.text(max_size=10)),
        st.sampled_from(
            [
                "",
                "---",
                "- a\n- b",
                "a: [1,",
                "a: !!python/object:os.system x",
                "&a [*a]",
                "key: value\nkey: other",
                "\t: 1",
                "num_classes: 1e999",
            ]
        ),
    )
)
def test_yaml_documents(tmp_path_factory, capsys, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    resolve_or_our_error(["--c", str(path)], capsys)


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_undecodable_config_files(tmp_path_factory, capsys, data):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(data)
    resolve_or_our_error(["--c", str(path)], capsys)


def test_missing_and_folder_config_files(tmp_path, capsys):
    resolve_or_our_error(["--c", str(tmp_path / "missing.yaml")], capsys)
    resolve_or_our_error(["--c", str(tmp_path)], capsys)
    with pytest.raises(ConfigError, match="missing.yaml"):
        build_config(["--c", str(tmp_path / "missing.yaml")])
