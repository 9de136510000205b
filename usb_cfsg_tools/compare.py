"""Compare algorithms (and variants of them) over seeds on the same data, split, network and budget.

::

    python -m usb_cfsg_tools.compare --c config/demo/cfsg_fmnist.yaml \\
        --algorithms fixmatch openmatch iomatch clip_zeroshot cfsg_clip \\
        --variants "cfsg_no_sfm:cfsg_clip,use_sfm=false" "cfsg_no_vsi:cfsg_clip,use_vsi=false" \\
        --seeds 0 1 2 --save_dir saved_models/compare [--jobs N] [--score energy] [--key value ...]

Every run is a separate training process, ``<python> -m usb_cfsg.cli.train`` (isolation: one run's
failure or memory cannot affect another), in the runner's working folder, so it imports the same
installed ``usb_cfsg`` as the runner's interpreter and resolves a config's relative paths as the runner
does (:data:`usb_cfsg.config.PATH_RULE`). It runs as a subprocess of this machine (``--launcher local``,
``--jobs`` at a time) or as its own job through submitit (``--launcher submitit``: a SLURM job array, or
submitit's local executor with ``--cluster local``; :mod:`usb_cfsg_tools.compare_launch`, docs/cluster.md).
All rows share the base config; a row whose algorithm differs from the
base config's drops the base algorithm's own keys (so e.g. cfsg_clip's ``start_fix`` never leaks
into openmatch, whose default differs), takes its own algorithm's defaults, then the variant's
``key=value`` pairs; ``--key value`` pairs after the known options apply to every run. The
config each row runs is written to ``<save_dir>/configs/<row>.yaml``; runs live in
``<save_dir>/runs/<row>_seed<seed>/`` and their output in ``<save_dir>/logs/``.

A run is finished when its ``openset_metrics.json`` exists and its ``config.yaml`` matches what the
runner would run now; finished runs are skipped, and so are runs whose process or job is still queued
or running (``logs/<run>.status.json``), so an interrupted comparison resumes where it stopped
(failed and unfinished runs start again from scratch). A failed run is reported and the others go
on. ``--collect`` runs nothing: it writes the results of the finished runs and lists the others as
running, failed (with the last line of their log) or missing.
At the end ``results.csv`` (one line per row and seed) and ``results.md`` (rows = algorithms and
variants, columns = the headline metrics of each row's primary unknown score, mean ± sample std
over seeds, in %) are written to ``save_dir``, with ``results.png`` and ``roc.png``, which compare ONE
unknown score across rows (``--score``, default energy, which every algorithm reports; never each
row's own primary score) and state the score, the budget, the seeds and each row's prior
(``zs_weight``); the exit status is 1 when any run is not finished.

Demo CLIP builds: every run records the sha256 of the demo CLIP build it used (``demo_clip_sha256``
in its ``config.yaml`` and ``openset_metrics.json``; none without a demo CLIP). A finished run whose
build is not the one the card describes now is stale and runs again. A table never mixes builds:
when the runs' ``openset_metrics.json`` name two builds (e.g. the demo CLIP was rebuilt while the
comparison ran), nothing is tabulated; the error names the runs of each build with both hashes, and
the exit status is 2. ``results.md`` names the build of its runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import csv
import json
import logging
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from usb_cfsg.errors import ConfigError, UsbCfsgError
from usb_cfsg_tools.compare_launch import (
    add_launcher_options,
    last_line,
    run_command,
    run_state,
    sbatch_script,
    submit,
    wait,
)

logger = logging.getLogger("usb_cfsg")

#: (JSON key, results.md column) of the reported metrics, in table order.
METRICS: Tuple[Tuple[str, str], ...] = (
    ("closed_acc", "closed acc"),
    ("auroc", "AUROC"),
    ("fpr95", "FPR95"),
    ("open_bacc", "open bAcc"),
    ("unknown_recall", "unknown recall"),
    ("seen_acc", "seen acc (K+1)"),
    ("h_score", "H-score"),
    ("macro_f1", "macro-F1"),
)
METRICS_FILE = "openset_metrics.json"
#: Localization figures (datasets with object boxes, nets with a patch map): (key in
#: ``openset_metrics.json["localization"]``, column title); CSV columns ``loc_<key>``.
LOC_METRICS: Tuple[Tuple[str, str], ...] = (
    ("pointing_acc", "pointing"),
    ("mass_in_box", "mass in box"),
    ("kept_in_box", "kept in box"),
    ("chance", "chance"),
)
#: Keys the runner sets per run; they never make a finished run stale.
RUN_KEYS = ("save_dir", "save_name", "overwrite", "resume", "load_path")
#: Keys the launcher fills in at start (device index, rendezvous) or that only change how data is loaded
#: or what is logged; a finished run whose config differs only in these is still finished.
_RUNTIME_KEYS = (
    "gpu",
    "dist_url",
    "rank",
    "num_workers",
    "persistent_workers",
    "pin_memory",
    "cache_images",
    "cache_budget_gb",
    "use_tensorboard",
    "use_wandb",
    "use_aim",
    "relevance_dir",
    "eval_subset",  # in-training evaluations only; openset_metrics.json is always on the full test set
)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Row:
    """One line of the table: an algorithm, or a named variant of one (``overrides`` as strings)."""

    name: str
    algorithm: str
    overrides: Tuple[Tuple[str, str], ...] = ()


@dataclass
class Run:
    """One (row, seed) training run."""

    row: Row
    seed: int
    run_dir: Path
    log_file: Path
    argv: List[str] = field(default_factory=list)
    status: str = "pending"  # pending | finished | running | failed | missing (compare_launch.run_state)
    detail: str = ""


def parse_variant(text: str) -> Row:
    """``"name:algorithm,key=value,..."`` -> :class:`Row`.

    Raises:
        ConfigError: malformed text, with the expected form.
    """
    form = 'expected "name:algorithm[,key=value...]", e.g. "cfsg_no_sfm:cfsg_clip,use_sfm=false"'
    if ":" not in text:
        raise ConfigError(f"variant {text!r}: {form}")
    name, rest = text.split(":", 1)
    parts = [p.strip() for p in rest.split(",")]
    algorithm, pairs = parts[0], parts[1:]
    if not _NAME.match(name.strip()) or not algorithm:
        raise ConfigError(f"variant {text!r}: {form} (names use letters, digits, _ . -)")
    overrides = []
    for pair in pairs:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise ConfigError(f"variant {text!r}: {pair!r} is not key=value; {form}")
        key, value = pair.split("=", 1)
        overrides.append((key.strip().lstrip("-"), value.strip()))
    return Row(name.strip(), algorithm, tuple(overrides))


def _pairs(argv: Sequence[str]) -> List[Tuple[str, str]]:
    from usb_cfsg.config import parse_cli_pairs

    return list(parse_cli_pairs(argv).items())


def row_config(base: Dict[str, Any], base_file: str, algorithm: str) -> Dict[str, Any]:
    """The base YAML for ``algorithm``: without the base algorithm's own keys when it differs."""
    from usb_cfsg.config import algorithm_own_keys

    cfg = dict(base)
    base_alg = base.get("algorithm")
    if base_alg and base_alg != algorithm:
        own = algorithm_own_keys(str(base_alg))
        dropped = sorted(k for k in cfg if k in own)
        if dropped:
            logger.info("%s: dropping %s's keys of %s: %s", algorithm, base_alg, base_file, ", ".join(dropped))
        cfg = {k: v for k, v in cfg.items() if k not in own}
    cfg["algorithm"] = algorithm
    return cfg


def run_argv(config_file: Path, run: Run, save_dir: Path, extra: Sequence[Tuple[str, str]]) -> List[str]:
    """The training command's arguments of one run (no interpreter, no module)."""
    argv = [
        "--c",
        str(config_file),
        "--algorithm",
        run.row.algorithm,
        "--seed",
        str(run.seed),
        "--save_dir",
        str(save_dir),
        "--save_name",
        run.run_dir.name,
        "--overwrite",
        "true",
        "--resume",
        "false",
        "--load_path",
        "none",
    ]
    for key, value in list(run.row.overrides) + list(extra):
        argv += [f"--{key}", value]
    return argv


def _comparable(cfg: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in RUN_KEYS and k not in _RUNTIME_KEYS}


def expected_config(argv: Sequence[str]) -> Dict[str, Any]:
    """The resolved config (as written to config.yaml) that a training run with ``argv`` would have.

    Includes ``demo_clip_sha256``, the build the run would record now (a run of another build is stale).
    """
    from usb_cfsg.config import build_config, config_to_dict
    from usb_cfsg.engine.provenance import record_demo_clip

    args = build_config(argv)
    record_demo_clip(args)
    return _comparable(config_to_dict(args))


def added_at_default(saved: Dict[str, Any], expected: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of ``expected`` that ``saved`` lacks and that are at their declared default.

    Such a key was added to the algorithm after the run was made. This package adds a key only with a
    default that keeps the earlier behaviour (the key's test says so), so a run made before the key
    existed is the same run as one made now with its default.
    """
    from usb_cfsg.algorithm_keys import ALGORITHMS

    spec = ALGORITHMS.get(str(expected.get("algorithm")))
    defaults = {key.name: key.default for key in spec.keys} if spec else {}
    return {k: v for k, v in expected.items() if k not in saved and k in defaults and v == defaults[k]}


def is_finished(run: Run, expected: Dict[str, Any]) -> Tuple[bool, str]:
    """Whether ``run`` finished with exactly this configuration (else why not).

    Keys added to the algorithm since the run was made count as the same configuration when they are
    at their default (:func:`added_at_default`).
    """
    if not (run.run_dir / METRICS_FILE).is_file():
        return False, "no openset_metrics.json"
    cfg_file = run.run_dir / "config.yaml"
    try:
        saved = _comparable(yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError) as exc:
        return False, f"unreadable {cfg_file} ({exc})"
    saved.update(added_at_default(saved, expected))
    if saved != expected:
        diff = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        return False, f"config changed since it ran ({', '.join(diff)})"
    return True, ""


#: thread-count variables a run inherits unless the caller set them
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run_env(base: Mapping[str, str], jobs: int, cpus: int) -> Dict[str, str]:
    """The environment of every run: ``base`` with the CPU's threads shared among concurrent runs.

    PyTorch gives every process as many intra-op threads as there are cores; two runs at a time on
    two cores then oversubscribe the CPU, and OpenMP's spinning threads slowed each run several-fold
    on our 2-core machine. With ``jobs`` > 1, each run gets ``max(1, cpus // jobs)`` threads, unless
    the caller set the variable (theirs wins).

    Args:
        base: The runner's environment.
        jobs: Runs at the same time.
        cpus: Cores of the machine.

    Returns:
        A new environment mapping.
    """
    env = dict(base)
    if jobs > 1:
        for name in THREAD_VARS:
            env.setdefault(name, str(max(1, cpus // jobs)))
    return env


#: The module every run executes (``python -m``): the installed package's training command.
TRAIN_MODULE = "usb_cfsg.cli.train"


def train_command(python: str, argv: Sequence[str]) -> List[str]:
    """The command line of one run: ``python -m`` :data:`TRAIN_MODULE` with the run's arguments."""
    return [python, "-m", TRAIN_MODULE, *argv]


def _execute(run: Run, python: str, env: Dict[str, str]) -> Run:
    """One run as a subprocess of this machine, in the runner's working folder (``--launcher local``)."""
    final = run_command(
        train_command(python, run.argv),
        str(run.log_file),
        str(run.run_dir / METRICS_FILE),
        os.getcwd(),
        env,
    )
    if final["state"] == "done":
        run.status, run.detail = "finished", f"{final['seconds']:.0f} s"
    else:
        tail = last_line(run.log_file)
        run.status = "failed"
        run.detail = f"exit {final['exit']} after {final['seconds']:.0f} s; log {run.log_file}" + (
            f": {tail}" if tail else ""
        )
    return run


def _finite(values: Sequence[Any]) -> List[float]:
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def mean_std(values: Sequence[Any]) -> Tuple[float, float, int]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the finite values, and their count."""
    vals = _finite(values)
    if not vals:
        return float("nan"), float("nan"), 0
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s, len(vals)


def format_cell(values: Sequence[Any], num_runs: int) -> str:
    """``mean±std`` in % with two decimals; ``n/a`` without values; ``(n/N)`` when some runs lack it."""
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    text = f"{100 * m:.2f}±{100 * s:.2f}" if n > 1 else f"{100 * m:.2f}"
    return text + (f" ({n}/{num_runs})" if n < num_runs else "")


def collect(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """One record per run with an openset_metrics.json: row, algorithm, seed, primary score, metrics."""
    records = []
    for run in runs:
        path = run.run_dir / METRICS_FILE
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        rec = {
            "row": run.row.name,
            "algorithm": run.row.algorithm,
            "seed": run.seed,
            "primary_score": data.get("primary_score"),
            "num_seen": data.get("num_seen"),
        }
        for key, _ in METRICS:
            rec[key] = data.get(key)
        rec["auroc_by_score"] = {name: m.get("auroc") for name, m in (data.get("scores") or {}).items()}
        # per unseen group (SSB difficulty; fmnist_badged near / far): AUROC of every score
        rec["auroc_by_group"] = {
            group: {name: (m.get("difficulty") or {}).get(group, {}).get("auroc") for name, m in data["scores"].items()}
            for group in (data.get("difficulty") or {})
        }
        for group, by_score in rec["auroc_by_group"].items():  # results.csv: the primary score's, per group
            rec[f"auroc_{group}"] = by_score.get(str(data.get("primary_score")))
        rec["h_score_by_score"] = {name: m.get("h_score") for name, m in (data.get("scores") or {}).items()}
        rec.update(_budget_and_prior(run.run_dir))
        rec["demo_clip_sha256"] = data.get("demo_clip_sha256")
        loc = data.get("localization") or {}
        for key, _ in LOC_METRICS:
            rec[f"loc_{key}"] = loc.get(key)
        rec["run_dir"] = str(run.run_dir)
        records.append(rec)
    return records


def _budget_and_prior(run_dir: Path) -> Dict[str, Any]:
    """``num_train_iter`` and ``zs_weight`` (the zero-shot prior) from a run's config.yaml (None when unreadable)."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    return {"num_train_iter": cfg.get("num_train_iter"), "zs_weight": cfg.get("zs_weight")}


class MixedBuildsError(ConfigError):
    """The runs of one table used different demo CLIP builds."""


def check_one_build(records: Sequence[Dict[str, Any]]) -> Optional[str]:
    """The one demo CLIP build (sha256) of the runs, None when none used a demo CLIP.

    Runs without a demo CLIP (``demo_clip_sha256`` null: another backbone, e.g. a random-init row)
    may sit beside the runs of one build; two builds may not.

    Raises:
        MixedBuildsError: two builds, naming the rows and runs of each with both hashes, and the fix.
    """
    builds: Dict[str, List[Dict[str, Any]]] = {}
    for rec in records:
        if rec.get("demo_clip_sha256"):
            builds.setdefault(str(rec["demo_clip_sha256"]), []).append(rec)
    if len(builds) <= 1:
        return next(iter(builds), None)
    listed = "; ".join(
        f"build {sha}: " + ", ".join(f"{r['row']} seed {r['seed']} ({r['run_dir']})" for r in recs)
        for sha, recs in builds.items()
    )
    raise MixedBuildsError(
        f"the runs used {len(builds)} different demo CLIP builds, whose results are not comparable, so no table "
        f"is written: {listed}. The demo CLIP was rebuilt between runs. Run the same comparison again: runs of "
        f"another build than the card's current one are stale and run again (or point --pretrain_path/"
        f"--pretrain_pool at one build's folder)"
    )


def write_csv(path: Path, records: Sequence[Dict[str, Any]]) -> None:
    """results.csv: one line per row and seed, metrics as fractions (empty = undefined)."""
    columns = [
        "row",
        "algorithm",
        "seed",
        "primary_score",
        *[k for k, _ in METRICS],
        *[f"loc_{k}" for k, _ in LOC_METRICS],
        *sorted({k for rec in records for k in rec if k.startswith("auroc_") and not k.startswith("auroc_by_")}),
        "demo_clip_sha256",
        "run_dir",
    ]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in columns})
    os.replace(tmp, path)


def render_markdown(
    rows: Sequence[Row],
    records: Sequence[Dict[str, Any]],
    seeds: Sequence[int],
    command: str,
    failed: Sequence[Run],
    unfinished: Sequence[Run] = (),
) -> str:
    """results.md: rows = algorithms/variants, columns = metrics, mean ± std over seeds (in %)."""
    head = ["algorithm", "score", *[title for _, title in METRICS], "seeds"]
    lines = [
        "# Open-set comparison",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds {', '.join(map(str, seeds))}; cells are mean±std (sample std) over seeds in %, for each row's "
        "primary unknown score (column `score`). FPR95: false-positive rate at 95% TPR with unknown as positive "
        "(lower is better). open bAcc, unknown recall, seen acc (accuracy of seen-class images in the K+1-way "
        "prediction), H-score and macro-F1 use the evaluator's threshold.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|",
    ]
    for row in rows:
        recs = [r for r in records if r["row"] == row.name]
        name = (
            row.name
            if row.name == row.algorithm
            else f"{row.name} ({row.algorithm}, " + ", ".join(f"{k}={v}" for k, v in row.overrides) + ")"
        )
        scores = sorted({str(r["primary_score"]) for r in recs}) or ["-"]
        cells = [format_cell([r[k] for r in recs], len(seeds)) for k, _ in METRICS]
        lines.append("| " + " | ".join([name, "/".join(scores), *cells, f"{len(recs)}/{len(seeds)}"]) + " |")
    lines += _score_table(rows, records, len(seeds))
    lines += _group_table(rows, records, len(seeds))
    lines += _localization_table(rows, records, len(seeds))
    builds = sorted({str(r["demo_clip_sha256"]) for r in records if r.get("demo_clip_sha256")})
    if builds:
        lines += ["", f"Demo CLIP build (sha256 of its weights, from its card.json): {', '.join(builds)}"]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {run.row.name} seed {run.seed}: {run.detail}" for run in failed]
    if unfinished:
        lines += ["", "Runs without results yet:", ""]
        lines += [f"- {run.row.name} seed {run.seed}: {run.status}, {run.detail}" for run in unfinished]
    return "\n".join(lines) + "\n"


def _score_table(rows: Sequence[Row], records: Sequence[Dict[str, Any]], num_seeds: int) -> List[str]:
    """The AUROC of every unknown score a row reports (not only its primary one), mean ± std over seeds."""
    lines = [
        "",
        "AUROC of every score each row reports (mean±std over seeds in %; the primary score first):",
        "",
        "| algorithm | AUROC per score |",
        "|---|---|",
    ]
    for row in rows:
        recs = [r for r in records if r["row"] == row.name]
        names: List[str] = []
        for r in recs:
            names += [n for n in r["auroc_by_score"] if n not in names]
        primary = {str(r["primary_score"]) for r in recs}
        names.sort(key=lambda n: n not in primary)  # stable: the primary first, then the evaluator's order
        cells = [f"{n} {format_cell([r['auroc_by_score'].get(n) for r in recs], num_seeds)}" for n in names]
        lines.append(f"| {row.name} | {', '.join(cells) or 'n/a'} |")
    return lines


def _group_table(rows: Sequence[Row], records: Sequence[Dict[str, Any]], num_seeds: int) -> List[str]:
    """AUROC per unseen group (seen test images against one group's), every score, when the runs report groups."""
    groups: List[str] = []
    for r in records:
        groups += [g for g in r.get("auroc_by_group", {}) if g not in groups]
    if not groups:
        return []
    lines = [
        "",
        "AUROC per unseen group (seen-class test images against that group's; mean±std over seeds in %):",
        "",
        "| algorithm | " + " | ".join(groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for row in rows:
        recs = [r for r in records if r["row"] == row.name]
        cells = []
        for g in groups:
            names: List[str] = []
            for r in recs:
                names += [n for n in r.get("auroc_by_group", {}).get(g, {}) if n not in names]
            primary = {str(r["primary_score"]) for r in recs}
            names.sort(key=lambda n: n not in primary)
            vals = [
                f"{n} {format_cell([r.get('auroc_by_group', {}).get(g, {}).get(n) for r in recs], num_seeds)}"
                for n in names
            ]
            cells.append(", ".join(vals) or "n/a")
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return lines


#: (JSON key, legend) of the metrics drawn in results.png
FIGURE_METRICS: Tuple[Tuple[str, str], ...] = (("closed_acc", "closed acc"), ("auroc", "AUROC"), ("h_score", "H-score"))
#: The score every comparison figure draws unless ``--score`` names another: every algorithm reports it.
FIGURE_SCORE = "energy"


def _values(recs: Sequence[Dict[str, Any]], key: str) -> List[Any]:
    return sorted({r.get(key) for r in recs if r.get(key) is not None}, key=str)


def _joined(values: Sequence[Any]) -> str:
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "?"


def figure_labels(rows: Sequence[Row], records: Sequence[Dict[str, Any]]) -> Tuple[List[str], str]:
    """Per row its figure label (name and prior ``zs_weight``; its budget too when rows differ), and the budget.

    Returns:
        ``(labels, budget)``: ``budget`` is e.g. ``"500 training iterations"`` when every run shares it,
        else ``"budget per row"``.
    """
    budgets = _values(records, "num_train_iter")
    labels = []
    for row in rows:
        recs = [r for r in records if r["row"] == row.name]
        label = f"{row.name} (zs_weight {_joined(_values(recs, 'zs_weight'))}"
        if len(budgets) > 1:
            label += f", {_joined(_values(recs, 'num_train_iter'))} it"
        labels.append(label + ")")
    budget = f"{_joined(budgets)} training iterations" if len(budgets) == 1 else "budget per row"
    return labels, budget


def write_figures(
    save_dir: Path,
    rows: Sequence[Row],
    records: Sequence[Dict[str, Any]],
    seeds: Sequence[int],
    score: str = FIGURE_SCORE,
) -> List[str]:
    """results.png and roc.png, both of ONE unknown score for every row (``score``), never each row's own.

    ``results.png``: bars of closed accuracy (score-free), and the AUROC and H-score of ``score``
    per row, mean with the seeds' std. ``roc.png``: the ROC curve of ``score`` for every row on the
    first seed, from the run folders' ``open_scores.npz``. Both state the score, the budget
    (``num_train_iter``), the seeds, and per row its prior (``zs_weight``). Rows whose runs lack
    ``score`` are left out of its bars and curves, with a warning.

    Returns:
        The file names written (relative to ``save_dir``).
    """
    from usb_cfsg.evaluation.plots import save_metric_bars, save_roc

    labels, budget = figure_labels(rows, records)
    label_of = dict(zip((row.name for row in rows), labels))
    missing = sorted({r["row"] for r in records if score not in r.get("auroc_by_score", {})})
    if missing:
        logger.warning("figures: %s report no %s score; their %s bars and curves are left out", missing, score, score)
    seen_seeds = [s for s in seeds if any(r["seed"] == s for r in records)]
    caption = (
        f"score: {score} for every row (AUROC and H-score); {budget}; seeds {', '.join(map(str, seen_seeds))} "
        f"(mean, error bar: std); prior per row: zs_weight"
    )
    metrics: Dict[str, Sequence[Sequence[float]]] = {
        "closed acc": [_finite([r.get("closed_acc") for r in records if r["row"] == row.name]) for row in rows],
        f"AUROC ({score})": [
            _finite([r["auroc_by_score"].get(score) for r in records if r["row"] == row.name]) for row in rows
        ],
        f"H-score ({score})": [
            _finite([r.get("h_score_by_score", {}).get(score) for r in records if r["row"] == row.name]) for row in rows
        ],
    }
    written = []
    if any(records):
        save_metric_bars(
            save_dir / "results.png",
            labels,
            metrics,
            title=f"Closed accuracy, AUROC and H-score of {score}",
            caption=caption,
        )
        written.append("results.png")
    seed = seeds[0]
    curves: Dict[str, Any] = {}
    truth, k = None, 0
    for row in rows:
        rec = next((r for r in records if r["row"] == row.name and r["seed"] == seed), None)
        path = Path(rec["run_dir"]) / "open_scores.npz" if rec is not None else None
        if rec is None or path is None or not path.is_file():
            logger.warning("roc.png: no open_scores.npz for %s seed %d; left out", row.name, seed)
            continue
        with np.load(path) as data:
            key = f"score_{score}"
            if key not in data:
                logger.warning("roc.png: %s has no %s; left out", path, key)
                continue
            y = data["y_open"]
            if truth is not None and not np.array_equal(truth, y):
                logger.warning("roc.png: %s has another test set than the first row; left out", row.name)
                continue
            truth, k = y, int(rec["num_seen"])
            curves[label_of[row.name]] = data[key]
    if curves and truth is not None:
        unknown = truth == k  # the unknown label is K
        save_roc(save_dir / "roc.png", curves, unknown, title=f"{score} score of every row; seed {seed}; {budget}")
        written.append("roc.png")
    return written


def _localization_table(rows: Sequence[Row], records: Sequence[Dict[str, Any]], num_seeds: int) -> List[str]:
    """Localization figures per row (only when some run has them), mean ± std over seeds."""
    if not any(r.get(f"loc_{LOC_METRICS[0][0]}") is not None for r in records):
        return []
    lines = [
        "",
        "Localization (images with object boxes; the net's patch map: SFM relevance for cfsg_clip, GL-MCM's "
        "patch map for clip_zeroshot): pointing accuracy, the map's mass on the box's patches, the fraction of "
        "kept patches on the box, and the chance level of all three (the box's share of the patches), "
        "mean±std over seeds in %:",
        "",
        "| algorithm | " + " | ".join(title for _, title in LOC_METRICS) + " |",
        "|---|" + "|".join(["---:"] * len(LOC_METRICS)) + "|",
    ]
    for row in rows:
        recs = [r for r in records if r["row"] == row.name]
        if not any(r.get(f"loc_{LOC_METRICS[0][0]}") is not None for r in recs):
            continue
        cells = [format_cell([r.get(f"loc_{k}") for r in recs], num_seeds) for k, _ in LOC_METRICS]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m usb_cfsg_tools.compare",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Any further --key value pair is passed to every run (e.g. --num_train_iter 200).",
    )
    p.add_argument("--c", required=True, help="base config (YAML) shared by every run")
    p.add_argument("--algorithms", nargs="*", default=[], help="registered algorithm names, one row each")
    p.add_argument("--variants", nargs="*", default=[], help='"name:algorithm,key=value,..." rows')
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    p.add_argument("--save_dir", required=True, help="comparison folder (configs/, runs/, logs/, results.*)")
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time (default 1: one after another)")
    p.add_argument(
        "--score",
        default=FIGURE_SCORE,
        help=f"the one unknown score results.png and roc.png draw for every row (default {FIGURE_SCORE}, which "
        "every algorithm reports)",
    )
    p.add_argument("--python", default=sys.executable, help="interpreter of the runs (default: this one)")
    add_launcher_options(p)
    return p


def plan(opts: argparse.Namespace, extra_argv: Sequence[str]) -> Tuple[List[Row], List[Run], Dict[str, Any]]:
    """Validate everything and lay out the runs (writes the per-row configs); nothing is trained."""
    from usb_cfsg.algorithms import get_algorithm_class
    from usb_cfsg.config import load_yaml

    rows = [Row(a, a) for a in opts.algorithms] + [parse_variant(v) for v in opts.variants]
    if not rows:
        raise ConfigError("nothing to compare: give --algorithms and/or --variants")
    names = [r.name for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"row names must be unique, got {dupes} more than once")
    for row in rows:
        get_algorithm_class(row.algorithm)  # unknown names fail here, with suggestions
    if len(set(opts.seeds)) != len(opts.seeds):
        raise ConfigError(f"--seeds repeats a seed: {opts.seeds}")
    if opts.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {opts.jobs}")
    extra = _pairs(extra_argv)
    reserved = sorted({k for k, _ in extra} & {"c", "algorithm", "seed", *RUN_KEYS})
    if reserved:
        raise ConfigError(
            f"{', '.join('--' + k for k in reserved)} cannot be passed through: the runner sets them "
            f"per run (rows with --algorithms/--variants, seeds with --seeds, folders with --save_dir)"
        )
    base = load_yaml(opts.c)
    save_dir = Path(opts.save_dir).resolve()
    runs_dir = save_dir / "runs"
    (save_dir / "configs").mkdir(parents=True, exist_ok=True)
    runs, expected = [], {}
    for row in rows:
        cfg_file = save_dir / "configs" / f"{row.name}.yaml"
        text = yaml.safe_dump(row_config(base, opts.c, row.algorithm), sort_keys=False)
        if not cfg_file.is_file() or cfg_file.read_text(encoding="utf-8") != text:
            cfg_file.write_text(text, encoding="utf-8")
        for seed in opts.seeds:
            run = Run(row, seed, runs_dir / f"{row.name}_seed{seed}", save_dir / "logs" / f"{row.name}_seed{seed}.log")
            run.argv = run_argv(cfg_file, run, runs_dir, extra)
            expected[run.run_dir.name] = expected_config(run.argv)  # every key checked before anything runs
            runs.append(run)
    return rows, runs, expected


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the comparison; returns the exit status (0 all runs finished, 1 some failed, 2 bad arguments or
    runs of different demo CLIP builds)."""
    from usb_cfsg.engine.launch import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(None)
    opts, extra_argv = build_parser().parse_known_args(argv)
    try:
        rows, runs, expected = plan(opts, extra_argv)
    except UsbCfsgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_dir = Path(opts.save_dir).resolve()
    command = "python -m usb_cfsg_tools.compare " + shlex.join(argv)
    name = f"usb_cfsg-{save_dir.name}"
    if opts.print_sbatch:
        try:
            print(sbatch_script(opts, save_dir / "submitit", name, len(runs)), end="")
        except UsbCfsgError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    for run in runs:
        done, why = is_finished(run, expected[run.run_dir.name])
        run.status, run.detail = run_state(done, why, run.log_file)
    if not opts.collect:
        try:
            _launch(opts, runs, save_dir, name, command)
        except UsbCfsgError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if opts.launcher == "submitit":
            if not opts.wait:
                return 0
            for run in runs:  # what the jobs left: the same view as --collect's
                done, why = is_finished(run, expected[run.run_dir.name])
                run.status, run.detail = run_state(done, why, run.log_file)

    records = collect(runs)
    try:
        check_one_build(records)
    except MixedBuildsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in runs if r.status == "failed"]
    unfinished = [r for r in runs if r.status in ("running", "missing")]
    write_csv(save_dir / "results.csv", records)
    md = render_markdown(rows, records, opts.seeds, command, failed, unfinished)
    figures = write_figures(save_dir, rows, records, opts.seeds, opts.score)
    if figures:
        md += (
            f"\nFigures (score {opts.score} for every row): "
            + ", ".join(f"[{name}]({name})" for name in figures)
            + "\n"
        )
    tmp = save_dir / "results.md.tmp"
    tmp.write_text(md, encoding="utf-8")
    os.replace(tmp, save_dir / "results.md")
    logger.info("results: %s and %s", save_dir / "results.md", save_dir / "results.csv")
    logger.info("\n%s", md)
    finished = sum(r.status == "finished" for r in runs)
    print(f"{finished} of {len(runs)} runs finished; results in {save_dir / 'results.md'}")
    for run in failed + unfinished:
        print(f"  {run.status}: {run.row.name} seed {run.seed}: {run.detail}")
    if failed:
        logger.error(
            "%d of %d runs failed: %s", len(failed), len(runs), "; ".join(f"{r.row.name} seed {r.seed}" for r in failed)
        )
    return 0 if finished == len(runs) else 1


def _launch(opts: argparse.Namespace, runs: Sequence[Run], save_dir: Path, name: str, command: str) -> None:
    """Start the runs that have no results and are not running: failed runs again, missing ones for the first time."""
    todo = [run for run in runs if run.status in ("failed", "missing")]
    for run in runs:
        if run.status == "running":
            logger.info("%s seed %d is %s: not started again", run.row.name, run.seed, run.detail)
        elif run.status == "failed":
            logger.info("%s seed %d runs again (it failed: %s)", run.row.name, run.seed, run.detail)
    logger.info(
        "comparison in %s: %d runs, %d finished before, %d running, %d to run (%s)",
        save_dir,
        len(runs),
        sum(r.status == "finished" for r in runs),
        sum(r.status == "running" for r in runs),
        len(todo),
        f"{opts.jobs} at a time" if opts.launcher == "local" else f"submitit, {opts.cluster}",
    )
    if not todo:
        return
    cwd = os.getcwd()  # every run starts where the runner was started, local process or job
    if opts.launcher == "submitit":
        specs = [
            dict(
                cmd=train_command(opts.python, run.argv),
                log_file=str(run.log_file),
                metrics_file=str(run.run_dir / METRICS_FILE),
                cwd=cwd,
                env=None,  # the job's own environment (its node's GPUs), with the runner's folder on PYTHONPATH
            )
            for run in todo
        ]
        jobs = submit(opts, specs, save_dir / "submitit", name, cwd)
        logger.info(
            "submitted %d jobs (%s); their output: %s. When they have run: %s --collect",
            len(jobs),
            ", ".join(str(j.job_id) for j in jobs[:8]) + (" ..." if len(jobs) > 8 else ""),
            save_dir / "logs",
            command,
        )
        if opts.wait:
            wait(jobs)
        return
    env = run_env(os.environ, opts.jobs, os.cpu_count() or 1)
    if env.get("OMP_NUM_THREADS") != os.environ.get("OMP_NUM_THREADS"):
        logger.info("each run gets OMP_NUM_THREADS=%s (%d runs at a time)", env["OMP_NUM_THREADS"], opts.jobs)
    with futures.ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        pending = {pool.submit(_execute, run, opts.python, env): run for run in todo}
        for i, fut in enumerate(futures.as_completed(pending), 1):
            run = fut.result()
            level = logging.INFO if run.status == "finished" else logging.ERROR
            logger.log(
                level, "[%d/%d] %s seed %d: %s (%s)", i, len(todo), run.row.name, run.seed, run.status, run.detail
            )


if __name__ == "__main__":
    sys.exit(main())
