"""The comparison runner: rows x seeds as train.py subprocesses, resumption, failures, results.csv / results.md."""

import csv
import json
import math
import os

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from usb_cfsg.errors import ConfigError
from usb_cfsg_tools import compare


def _base_config(path, cub_root):
    cfg = dict(
        algorithm="cfsg_clip",
        net="clip_tiny",
        pretrained="none",
        dataset="cub200",
        data_dir=cub_root,
        num_classes=3,
        num_labels=6,
        img_size=64,
        batch_size=4,
        eval_batch_size=8,
        num_train_iter=2,
        num_eval_iter=2,
        num_log_iter=1,
        num_workers=0,
        device="cpu",
        optim="AdamW",
        lr=0.001,
        use_tensorboard=False,
        save_dir="./elsewhere",
        save_name="base",
        start_fix=0,
        use_sfm=True,
    )
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _grid_argv(base, save_dir) -> list:
    """The 2 x 2 grid of the runner tests: fixmatch and openmatch, seeds 0 and 1."""
    return ["--c", base, "--algorithms", "fixmatch", "openmatch", "--seeds", "0", "1", "--save_dir", str(save_dir)]


def test_variant_parsing_and_cells():
    row = compare.parse_variant("cfsg_no_sfm:cfsg_clip,use_sfm=false, vsi_topk = 2")
    assert row == compare.Row("cfsg_no_sfm", "cfsg_clip", (("use_sfm", "false"), ("vsi_topk", "2")))
    for bad in ("no_colon", "x:cfsg_clip,use_sfm", "bad name:fixmatch"):
        with pytest.raises(ConfigError, match="variant"):
            compare.parse_variant(bad)
    assert compare.format_cell([0.5, 0.7], 2) == "60.00±14.14"  # sample std
    assert compare.format_cell([0.5, None], 2) == "50.00 (1/2)"
    assert compare.format_cell([None], 1) == "n/a"


def test_localization_figures_get_their_own_table_and_csv_columns(tmp_path):
    rows = [compare.Row("cfsg_clip", "cfsg_clip"), compare.Row("fixmatch", "fixmatch")]
    base = {k: 0.5 for k, _ in compare.METRICS}
    records = [
        {"row": "cfsg_clip", "algorithm": "cfsg_clip", "seed": s, "primary_score": "energy", **base}
        | {"auroc_by_score": {}, "run_dir": "x", "loc_pointing_acc": p, "loc_mass_in_box": 0.4}
        | {"loc_kept_in_box": 0.3, "loc_chance": 0.2}
        for s, p in ((0, 0.6), (1, 0.8))
    ] + [{"row": "fixmatch", "algorithm": "fixmatch", "seed": 0, "primary_score": "msp", **base, "auroc_by_score": {}}]
    md = compare.render_markdown(rows, records, [0, 1], "cmd", [])
    assert "| algorithm | pointing | mass in box | kept in box | chance |" in md
    assert "| cfsg_clip | 70.00±14.14 | 40.00±0.00 | 30.00±0.00 | 20.00±0.00 |" in md
    assert "| fixmatch | " not in md.split("Localization")[1]  # rows without a map are left out
    assert "Localization" not in compare.render_markdown(rows, records[2:], [0], "cmd", [])
    compare.write_csv(tmp_path / "r.csv", records)
    header = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert "loc_pointing_acc" in header and "loc_chance" in header


def test_figures_compare_one_score_and_say_what_they_compare(tmp_path, monkeypatch):
    """results.png / roc.png draw the same score for every row (energy, or --score), never each row's primary."""
    from usb_cfsg.evaluation import plots

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.full(20, 3)]
    rows = [compare.Row("cfsg_clip", "cfsg_clip"), compare.Row("fixmatch", "fixmatch")]
    records = []
    for row, primary, zs in (("cfsg_clip", "energy", 0.5), ("fixmatch", "msp", 0.0)):
        for seed in (0, 1):
            run_dir = tmp_path / f"{row}_seed{seed}"
            run_dir.mkdir()
            (run_dir / "config.yaml").write_text(yaml.safe_dump({"num_train_iter": 500, "zs_weight": zs}))
            np.savez(run_dir / "open_scores.npz", y_open=y, score_energy=rng.normal(size=40), score_msp=rng.random(40))
            records.append(
                {"row": row, "seed": seed, "primary_score": primary, "num_seen": 3, "closed_acc": 0.8}
                | {"auroc_by_score": {"energy": 0.9 if row == "fixmatch" else 0.7, "msp": 0.6}}
                | {"h_score_by_score": {"energy": 0.5, "msp": 0.1}, "run_dir": str(run_dir)}
                | compare._budget_and_prior(run_dir)
            )
    drawn = {}

    def capture_bars(path, rows, metrics, title=None, caption=None):
        drawn["bars"] = (list(rows), {k: [list(v) for v in vals] for k, vals in metrics.items()}, title, caption)

    def capture_roc(path, scores, is_unknown, title=None):
        drawn["roc"] = (list(scores), title)

    monkeypatch.setattr(plots, "save_metric_bars", capture_bars)
    monkeypatch.setattr(plots, "save_roc", capture_roc)
    assert compare.write_figures(tmp_path, rows, records, [0, 1]) == ["results.png", "roc.png"]
    labels, metrics, title, caption = drawn["bars"]
    assert labels == ["cfsg_clip (zs_weight 0.5)", "fixmatch (zs_weight 0)"]  # the prior per row
    assert metrics["AUROC (energy)"] == [[0.7, 0.7], [0.9, 0.9]]  # fixmatch's energy AUROC, not its msp one
    assert metrics["H-score (energy)"] == [[0.5, 0.5], [0.5, 0.5]]
    assert "energy" in title and "score: energy for every row" in caption
    assert "500 training iterations" in caption and "seeds 0, 1" in caption and "zs_weight" in caption
    assert drawn["roc"] == (labels, "energy score of every row; seed 0; 500 training iterations")
    compare.write_figures(tmp_path, rows, records, [1, 0], score="msp")  # the user's choice
    assert drawn["bars"][1]["AUROC (msp)"] == [[0.6, 0.6], [0.6, 0.6]] and drawn["roc"][1].startswith("msp score")
    records[0]["num_train_iter"] = 200  # budgets differ: each row says its own
    labels, budget = compare.figure_labels(rows, records)
    assert budget == "budget per row" and labels[0] == "cfsg_clip (zs_weight 0.5, 200/500 it)"


def test_switching_algorithm_drops_the_base_algorithms_own_keys(tmp_path, cub_root):
    with open(_base_config(tmp_path / "base.yaml", cub_root)) as fh:
        base = yaml.safe_load(fh)
    om = compare.row_config(base, "base.yaml", "openmatch")
    assert om["algorithm"] == "openmatch" and "start_fix" not in om and "use_sfm" not in om  # cfsg_clip's keys
    assert om["num_train_iter"] == 2 and om["net"] == "clip_tiny"  # shared keys stay
    assert compare.row_config(base, "base.yaml", "cfsg_clip")["start_fix"] == 0


def test_bad_arguments_fail_before_anything_runs(tmp_path, cub_root):
    base = _base_config(tmp_path / "base.yaml", cub_root)
    out = str(tmp_path / "cmp")
    assert compare.main(["--c", base, "--algorithms", "fixmatchh", "--save_dir", out]) == 2
    assert compare.main(["--c", base, "--algorithms", "fixmatch", "--save_dir", out, "--seed", "3"]) == 2
    assert compare.main(["--c", base, "--algorithms", "fixmatch", "--save_dir", out, "--lrr", "0.1"]) == 2
    assert not os.path.isdir(os.path.join(out, "runs"))


@pytest.mark.slow
def test_two_algorithms_two_seeds_resume_and_failure(tmp_path, cub_root):
    base = _base_config(tmp_path / "base.yaml", cub_root)
    out = tmp_path / "cmp"
    argv = _grid_argv(base, out) + ["--jobs", "2"]
    assert compare.main(argv) == 0
    runs = out / "runs"
    names = sorted(p.name for p in runs.iterdir())
    assert names == ["fixmatch_seed0", "fixmatch_seed1", "openmatch_seed0", "openmatch_seed1"]
    cfg = yaml.safe_load((runs / "openmatch_seed1" / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["start_fix"] == -1 and cfg["num_train_iter"] == 2  # openmatch's own default
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["row"], r["seed"]) for r in rows] == [
        ("fixmatch", "0"),
        ("fixmatch", "1"),
        ("openmatch", "0"),
        ("openmatch", "1"),
    ]
    assert {r["primary_score"] for r in rows if r["row"] == "openmatch"} == {"ova"}
    md = (out / "results.md").read_text()
    for title in (
        "closed acc",
        "AUROC",
        "FPR95",
        "open bAcc",
        "unknown recall",
        "seen acc (K+1)",
        "H-score",
        "macro-F1",
    ):
        assert title in md
    om_line = next(line for line in md.splitlines() if line.startswith("| openmatch |"))
    closed = [float(r["closed_acc"]) for r in rows if r["row"] == "openmatch"]
    mean = sum(closed) / 2
    std = math.sqrt(sum((c - mean) ** 2 for c in closed))
    assert f"{100 * mean:.2f}±{100 * std:.2f}" in om_line and om_line.endswith("| 2/2 |")
    # every score's AUROC, not only the primary one (openmatch: ova first, then msp)
    per_score = [line for line in md.splitlines() if line.startswith("| openmatch |")][1]
    msp = [
        json.loads((runs / f"openmatch_seed{i}" / "openset_metrics.json").read_text())["scores"]["msp"] for i in (0, 1)
    ]
    assert (
        per_score.startswith("| openmatch | ova ")
        and f"msp {compare.format_cell([m['auroc'] for m in msp], 2)}" in per_score
    )

    # the figures: bars with the seeds' spread, and the ROC curves of seed 0 from the runs' per-image scores
    assert (out / "results.png").is_file() and (out / "roc.png").is_file()
    assert "[results.png](results.png)" in md and "[roc.png](roc.png)" in md
    with np.load(runs / "openmatch_seed0" / "open_scores.npz") as data:
        assert {"y_open", "closed_pred", "score_ova", "score_msp", "score_energy"} <= set(data)
        auroc = roc_auc_score(data["y_open"] == 3, data["score_ova"])
    assert auroc == pytest.approx(float(next(r["auroc"] for r in rows if r["row"] == "openmatch" and r["seed"] == "0")))

    # resume: only the deleted run is trained again; the others keep their files untouched
    kept = (runs / "fixmatch_seed0" / "latest_model.pth").stat().st_mtime_ns
    (runs / "openmatch_seed0" / "openset_metrics.json").unlink()
    assert compare.main(argv) == 0
    assert (runs / "openmatch_seed0" / "openset_metrics.json").is_file()
    assert (runs / "fixmatch_seed0" / "latest_model.pth").stat().st_mtime_ns == kept
    log = (out / "logs" / "openmatch_seed0.log").read_text()
    assert "--algorithm openmatch --seed 0" in log

    # a failing run (its data folder does not exist) is reported; the others are reused
    bad = argv + ["--variants", f"om_bad:openmatch,data_dir={tmp_path / 'no_data'}"]
    assert compare.main(bad) == 1
    md = (out / "results.md").read_text()
    assert "Failed runs:" in md and "om_bad seed 0" in md
    assert "| fixmatch |" in md and "| openmatch |" in md


def test_concurrent_runs_share_the_cores_unless_the_caller_chose_threads():
    env = compare.run_env({"PATH": "/bin"}, jobs=2, cpus=2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" and env["PATH"] == "/bin"
    assert compare.run_env({}, jobs=3, cpus=16)["OMP_NUM_THREADS"] == "5"
    assert "OMP_NUM_THREADS" not in compare.run_env({}, jobs=1, cpus=2)  # one run: PyTorch's own default
    assert compare.run_env({"OMP_NUM_THREADS": "4"}, jobs=2, cpus=2)["OMP_NUM_THREADS"] == "4"  # the caller's wins


def test_every_run_is_the_installed_training_module_in_the_runners_folder(tmp_path, monkeypatch):
    """No train.py found through __file__: a run is ``<python> -m usb_cfsg.cli.train`` (the interpreter's
    installed usb_cfsg) started in the runner's working folder, where the config's relative paths resolve."""
    from usb_cfsg_tools import compare_launch

    calls = []

    class Exited:
        def wait(self):
            return 0

    def fake_popen(cmd, **kw):
        calls.append((cmd, kw))
        return Exited()

    monkeypatch.setattr(compare_launch.subprocess, "Popen", fake_popen)
    monkeypatch.chdir(tmp_path)
    run = compare.Run(compare.Row("fixmatch", "fixmatch"), 0, tmp_path / "run", tmp_path / "logs" / "run.log")
    run.argv = ["--c", "base.yaml"]
    compare._execute(run, "/some/python", {"PATH": "/bin"})
    ((cmd, kw),) = calls
    assert cmd == ["/some/python", "-m", "usb_cfsg.cli.train", "--c", "base.yaml"]
    assert kw.get("cwd") in (None, os.getcwd()) and "PYTHONPATH" not in kw["env"]
    assert run.status == "failed" and "exit 0" in run.detail  # exit 0 but no openset_metrics.json
    assert not any(a.dest == "train_py" for a in compare.build_parser()._actions)


def test_a_key_added_after_a_run_counts_as_the_same_config_only_at_its_default(tmp_path):
    expected = {"algorithm": "cfsg_clip", "seed": 0, "use_sfm": True, "fine_blocks": "shared", "vsi_inject": "input"}
    run = compare.Run(compare.Row("cfsg_clip", "cfsg_clip"), 0, tmp_path / "r", tmp_path / "r.log")
    run.run_dir.mkdir()
    (run.run_dir / compare.METRICS_FILE).write_text("{}")
    old = {k: v for k, v in expected.items() if k not in ("fine_blocks", "vsi_inject")}  # made before the keys
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    assert compare.is_finished(run, expected) == (True, "")
    # asked for another value of the new key, or a value of an old key changed: the run is stale
    done, why = compare.is_finished(run, {**expected, "fine_blocks": "separate"})
    assert not done and why == "config changed since it ran (fine_blocks)"
    done, why = compare.is_finished(run, {**expected, "use_sfm": False})
    assert not done and "use_sfm" in why
    # a key the algorithm does not declare is never assumed
    done, why = compare.is_finished(run, {**expected, "unknown_key": 1})
    assert not done and "unknown_key" in why
